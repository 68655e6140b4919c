package serf

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
)

// DecodeConfig decodes the plugin's config table into dst, a pointer to a struct: the Go
// counterpart of the Rust SDK's InitContext::config_as.
//
// Each exported field takes the key its `serf:"name"` tag names, or else its name in lower
// case; `serf:"-"` skips a field. A key absent from the table leaves its field as it was, so
// set defaults before the call. Fields may be strings, booleans, integers and floats of any
// size (integers are range-checked; a float field also takes an integer), []byte, slices,
// maps with string keys, nested structs (a TOML table), pointers to those, and any. A key of
// the table that no field takes is an error, so a misspelt key does not go unnoticed.
//
// Errors name the key, as in `config key "port": expected an integer, found "80"`, which
// makes a good Init refusal as it is.
//
//	type Config struct {
//		File    string `serf:"file"`
//		Verbose bool   `serf:"verbose"`
//	}
//	config := Config{File: "/data/out.txt"}
//	if err := ctx.DecodeConfig(&config); err != nil {
//		return err
//	}
func (c *InitContext) DecodeConfig(dst any) error {
	target := reflect.ValueOf(dst)
	if target.Kind() != reflect.Pointer || target.IsNil() || target.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("DecodeConfig wants a pointer to a struct, not %T", dst)
	}
	return decodeStruct(c.Config, target.Elem(), "")
}

// configFields maps each config key to the index of the struct field that takes it.
func configFields(ty reflect.Type) map[string]int {
	fields := make(map[string]int)
	for index := 0; index < ty.NumField(); index++ {
		field := ty.Field(index)
		if !field.IsExported() {
			continue
		}
		name := strings.ToLower(field.Name)
		if tag, ok := field.Tag.Lookup("serf"); ok {
			if tag == "-" {
				continue
			}
			if tag != "" {
				name = tag
			}
		}
		fields[name] = index
	}
	return fields
}

func decodeStruct(table map[string]any, dst reflect.Value, prefix string) error {
	fields := configFields(dst.Type())
	keys := make([]string, 0, len(table))
	for key := range table {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		path := prefix + key
		index, ok := fields[key]
		if !ok {
			known := make([]string, 0, len(fields))
			for name := range fields {
				known = append(known, name)
			}
			sort.Strings(known)
			return fmt.Errorf("config key %q: unknown key (known: %s)", path, strings.Join(known, ", "))
		}
		if err := decodeValue(table[key], dst.Field(index), path); err != nil {
			return err
		}
	}
	return nil
}

func decodeValue(value any, dst reflect.Value, path string) error {
	mismatch := func(expected string) error {
		return fmt.Errorf("config key %q: expected %s, found %s", path, expected, FormatValue(value))
	}
	switch dst.Kind() {
	case reflect.Interface:
		if value == nil {
			dst.SetZero()
			return nil
		}
		if !reflect.TypeOf(value).AssignableTo(dst.Type()) {
			return mismatch(dst.Type().String())
		}
		dst.Set(reflect.ValueOf(value))
	case reflect.Pointer:
		if value == nil {
			dst.SetZero()
			return nil
		}
		fresh := reflect.New(dst.Type().Elem())
		if err := decodeValue(value, fresh.Elem(), path); err != nil {
			return err
		}
		dst.Set(fresh)
	case reflect.String:
		text, ok := value.(string)
		if !ok {
			return mismatch("a string")
		}
		dst.SetString(text)
	case reflect.Bool:
		flag, ok := value.(bool)
		if !ok {
			return mismatch("a boolean")
		}
		dst.SetBool(flag)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		number, ok := value.(int64)
		if !ok {
			if _, big := value.(uint64); big {
				return fmt.Errorf("config key %q: %s does not fit %s", path, FormatValue(value), dst.Type())
			}
			return mismatch("an integer")
		}
		if dst.OverflowInt(number) {
			return fmt.Errorf("config key %q: %d does not fit %s", path, number, dst.Type())
		}
		dst.SetInt(number)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		var number uint64
		switch v := value.(type) {
		case int64:
			if v < 0 {
				return fmt.Errorf("config key %q: %d does not fit %s", path, v, dst.Type())
			}
			number = uint64(v)
		case uint64:
			number = v
		default:
			return mismatch("an integer")
		}
		if dst.OverflowUint(number) {
			return fmt.Errorf("config key %q: %d does not fit %s", path, number, dst.Type())
		}
		dst.SetUint(number)
	case reflect.Float32, reflect.Float64:
		var number float64
		switch v := value.(type) {
		case float64:
			number = v
		case int64:
			number = float64(v)
		case uint64:
			number = float64(v)
		default:
			return mismatch("a number")
		}
		if dst.Kind() == reflect.Float32 && !math.IsInf(number, 0) && math.Abs(number) > math.MaxFloat32 {
			return fmt.Errorf("config key %q: %s does not fit float32", path, FormatValue(value))
		}
		dst.SetFloat(number)
	case reflect.Slice:
		if bytes, ok := value.([]byte); ok && dst.Type().Elem().Kind() == reflect.Uint8 {
			dst.SetBytes(append([]byte(nil), bytes...))
			return nil
		}
		if text, ok := value.(string); ok && dst.Type().Elem().Kind() == reflect.Uint8 {
			dst.SetBytes([]byte(text))
			return nil
		}
		items, ok := value.([]any)
		if !ok {
			return mismatch("an array")
		}
		out := reflect.MakeSlice(dst.Type(), len(items), len(items))
		for index, item := range items {
			if err := decodeValue(item, out.Index(index), fmt.Sprintf("%s[%d]", path, index)); err != nil {
				return err
			}
		}
		dst.Set(out)
	case reflect.Map:
		if dst.Type().Key().Kind() != reflect.String {
			return fmt.Errorf("config key %q: a map field needs string keys, not %s", path, dst.Type().Key())
		}
		table, ok := value.(map[string]any)
		if !ok {
			return mismatch("a table")
		}
		out := reflect.MakeMapWithSize(dst.Type(), len(table))
		for key, item := range table {
			element := reflect.New(dst.Type().Elem()).Elem()
			if err := decodeValue(item, element, path+"."+key); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(key).Convert(dst.Type().Key()), element)
		}
		dst.Set(out)
	case reflect.Struct:
		table, ok := value.(map[string]any)
		if !ok {
			return mismatch("a table")
		}
		return decodeStruct(table, dst, path+".")
	default:
		return fmt.Errorf("config key %q: DecodeConfig cannot fill a field of type %s", path, dst.Type())
	}
	return nil
}
