module {{module}}

go 1.24

require {{sdk_module}} {{sdk_version}}
{{sdk_replace}}
