package serf

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

type nested struct {
	Region string `serf:"region"`
}

type typedConfig struct {
	File     string            `serf:"file"`
	Port     uint16            `serf:"port"`
	Retries  int               `serf:"retries"`
	Ratio    float64           `serf:"ratio"`
	Verbose  bool              `serf:"verbose"`
	Tags     []string          `serf:"tags"`
	Limits   map[string]int64  `serf:"limits"`
	Where    nested            `serf:"where"`
	Optional *int32            `serf:"optional"`
	Raw      any               `serf:"raw"`
	Secret   []byte            `serf:"secret"`
	Labels   map[string]string `serf:"labels"`
	Skipped  string            `serf:"-"`
	Plain    string
}

func TestDecodeConfigFillsEveryKindOfField(t *testing.T) {
	ctx := &InitContext{Config: map[string]any{
		"file": "/data/out.txt", "port": int64(8080), "retries": int64(-1), "ratio": int64(2),
		"verbose": true, "tags": []any{"a", "b"}, "limits": map[string]any{"x": int64(3)},
		"where": map[string]any{"region": "eu"}, "optional": int64(7), "raw": []any{int64(1)},
		"secret": "s3", "labels": map[string]any{}, "plain": "p",
	}}
	config := typedConfig{Skipped: "kept"}
	if err := ctx.DecodeConfig(&config); err != nil {
		t.Fatal(err)
	}
	seven := int32(7)
	want := typedConfig{
		File: "/data/out.txt", Port: 8080, Retries: -1, Ratio: 2, Verbose: true,
		Tags: []string{"a", "b"}, Limits: map[string]int64{"x": 3}, Where: nested{"eu"},
		Optional: &seven, Raw: []any{int64(1)}, Secret: []byte("s3"),
		Labels: map[string]string{}, Skipped: "kept", Plain: "p",
	}
	if !reflect.DeepEqual(config, want) {
		t.Fatalf("got %+v\nwant %+v", config, want)
	}
}

func TestDecodeConfigKeepsDefaultsForAbsentKeys(t *testing.T) {
	config := typedConfig{File: "default"}
	if err := (&InitContext{Config: map[string]any{}}).DecodeConfig(&config); err != nil {
		t.Fatal(err)
	}
	if config.File != "default" {
		t.Fatal(config.File)
	}
}

func TestDecodeConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		config map[string]any
		want   string
	}{
		{map[string]any{"file": int64(42)}, `config key "file": expected a string, found 42`},
		{map[string]any{"port": "80"}, `config key "port": expected an integer, found "80"`},
		{map[string]any{"port": int64(70000)}, `config key "port": 70000 does not fit uint16`},
		{map[string]any{"port": int64(-1)}, `config key "port": -1 does not fit uint16`},
		{map[string]any{"retries": uint64(math.MaxUint64)}, `config key "retries": 18446744073709551615 does not fit int`},
		{map[string]any{"tags": []any{"a", true}}, `config key "tags[1]": expected a string, found true`},
		{map[string]any{"where": map[string]any{"region": int64(1)}}, `config key "where.region": expected a string`},
		{map[string]any{"where": map[string]any{"zone": "a"}}, `config key "where.zone": unknown key (known: region)`},
		{map[string]any{"flie": "x"}, `config key "flie": unknown key (known: file, labels,`},
		{map[string]any{"skipped": "x"}, `config key "skipped": unknown key`},
		{map[string]any{"limits": []any{}}, `config key "limits": expected a table, found []`},
	}
	for _, c := range cases {
		var config typedConfig
		err := (&InitContext{Config: c.config}).DecodeConfig(&config)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.config, err, c.want)
		}
	}
}

func TestDecodeConfigWantsAPointerToAStruct(t *testing.T) {
	var config typedConfig
	for _, dst := range []any{config, nil, new(int), (*typedConfig)(nil)} {
		if err := (&InitContext{}).DecodeConfig(dst); err == nil {
			t.Errorf("%T accepted", dst)
		}
	}
}
