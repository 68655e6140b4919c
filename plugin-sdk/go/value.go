package serf

import (
	"math"
	"strconv"
	"strings"
	"unicode"
)

// FormatValue renders a config value the way the Rust SDK's messages show one (rmpv's
// Display): strings quoted and escaped, "nil", numbers as written, arrays as [a, b] and
// tables as {"key": value} with sorted keys. Use it to name an offending value in an error:
//
//	return errors.New("config key file must be a path, not " + serf.FormatValue(value))
func FormatValue(value any) string {
	var b strings.Builder
	formatValue(&b, value)
	return b.String()
}

func formatValue(b *strings.Builder, value any) {
	switch v := value.(type) {
	case nil:
		b.WriteString("nil")
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(v, 10))
	case int:
		b.WriteString(strconv.Itoa(v))
	case float64:
		b.WriteString(formatFloat(v))
	case string:
		b.WriteString(Quote(v))
	case []byte:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Itoa(int(x)))
		}
		b.WriteByte(']')
	case []any:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteString(", ")
			}
			formatValue(b, x)
		}
		b.WriteByte(']')
	case map[string]any:
		b.WriteByte('{')
		for i, key := range sortedKeys(v) {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(Quote(key))
			b.WriteString(": ")
			formatValue(b, v[key])
		}
		b.WriteByte('}')
	case Ext:
		b.WriteByte('[')
		b.WriteString(strconv.Itoa(int(v.Type)))
		b.WriteString(", ")
		formatValue(b, v.Data)
		b.WriteByte(']')
	default:
		b.WriteString("?")
	}
}

// formatFloat writes a float as Rust's Display does: the shortest digits that read back the
// same value, never an exponent.
func formatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// Quote puts s in double quotes with the escapes of Rust's Debug for strings: \t, \r, \n,
// \\, \", \0, and \u{XX} for other characters that do not print. Each byte that is not
// part of valid UTF-8 shows as U+FFFD, close to Rust's String::from_utf8_lossy (which uses one
// U+FFFD for a truncated multi-byte sequence).
func Quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case '\n':
			b.WriteString(`\n`)
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case 0:
			b.WriteString(`\0`)
		default:
			if unicode.IsGraphic(r) {
				b.WriteRune(r)
			} else {
				b.WriteString(`\u{`)
				b.WriteString(strconv.FormatUint(uint64(r), 16))
				b.WriteByte('}')
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
