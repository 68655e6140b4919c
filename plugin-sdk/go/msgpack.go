package serf

// A small msgpack codec: exactly what the ABI's payloads use, with no reflection, so that it
// builds with TinyGo and keeps modules small. The reader is tolerant in the ways the ABI asks
// (any integer width, str or bin for byte fields, nil as a zero value) and strict about the
// rest: it never reads past its input, never allocates more than the input could describe and
// never recurses deeper than maxDepth, so no input can make it panic.

import (
	"encoding/binary"
	"errors"
	"math"
	"sort"
	"strconv"
)

// maxDepth is how deeply arrays and maps may nest in one payload. Envelopes nest four levels
// (envelope, event, members, a member's tags); only config tables go deeper.
const maxDepth = 128

var (
	errTruncated = errors.New("unexpected end of input")
	errTooDeep   = errors.New("values nest more than " + strconv.Itoa(maxDepth) + " levels")
)

// The msgpack type families the reader tells apart.
type family uint8

const (
	famNil family = iota
	famBool
	famUint
	famInt
	famFloat
	famStr
	famBin
	famArray
	famMap
	famExt
	famReserved
)

func (f family) String() string {
	return [...]string{"nil", "bool", "integer", "integer", "float", "str", "bin", "array", "map", "ext", "reserved byte 0xc1"}[f]
}

// familyOf classifies a leading msgpack byte.
func familyOf(b byte) family {
	switch {
	case b <= 0x7f || b == 0xcc || b == 0xcd || b == 0xce || b == 0xcf:
		return famUint
	case b >= 0xe0 || b == 0xd0 || b == 0xd1 || b == 0xd2 || b == 0xd3:
		return famInt
	case b >= 0x80 && b <= 0x8f || b == 0xde || b == 0xdf:
		return famMap
	case b >= 0x90 && b <= 0x9f || b == 0xdc || b == 0xdd:
		return famArray
	case b >= 0xa0 && b <= 0xbf || b == 0xd9 || b == 0xda || b == 0xdb:
		return famStr
	case b == 0xc0:
		return famNil
	case b == 0xc2 || b == 0xc3:
		return famBool
	case b == 0xc4 || b == 0xc5 || b == 0xc6:
		return famBin
	case b == 0xca || b == 0xcb:
		return famFloat
	case b >= 0xc7 && b <= 0xc9 || b >= 0xd4 && b <= 0xd8:
		return famExt
	}
	return famReserved
}

// reader walks one msgpack buffer. Every method either consumes a whole value and returns it,
// or returns an error; after an error the reader is not used again.
type reader struct {
	buf   []byte
	off   int
	depth int
}

type typeError struct {
	want string
	got  family
}

func (e *typeError) Error() string {
	return "expected " + e.want + ", found " + e.got.String()
}

func (r *reader) peek() (byte, error) {
	if r.off >= len(r.buf) {
		return 0, errTruncated
	}
	return r.buf[r.off], nil
}

// take consumes n bytes; n comes from the input, so it is checked against what is left.
func (r *reader) take(n uint64) ([]byte, error) {
	if n > uint64(len(r.buf)-r.off) {
		return nil, errTruncated
	}
	start := r.off
	r.off += int(n)
	return r.buf[start:r.off], nil
}

func (r *reader) uintN(size int) (uint64, error) {
	b, err := r.take(uint64(size))
	if err != nil {
		return 0, err
	}
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(b)), nil
	}
	return binary.BigEndian.Uint64(b), nil
}

// isNil consumes a nil if one is next.
func (r *reader) isNil() bool {
	if r.off < len(r.buf) && r.buf[r.off] == 0xc0 {
		r.off++
		return true
	}
	return false
}

// mapLen reads a map header; maps count as a nesting level until leave is called.
func (r *reader) mapLen() (int, error) {
	return r.container(famMap, 0x80, 0xde, "map")
}

// arrayLen reads an array header; arrays count as a nesting level until leave is called.
func (r *reader) arrayLen() (int, error) {
	return r.container(famArray, 0x90, 0xdc, "array")
}

func (r *reader) container(want family, fix, wide byte, name string) (int, error) {
	b, err := r.peek()
	if err != nil {
		return 0, err
	}
	if got := familyOf(b); got != want {
		return 0, &typeError{name, got}
	}
	r.off++
	var n uint64
	switch {
	case b&0xf0 == fix:
		n = uint64(b & 0x0f)
	case b == wide:
		n, err = r.uintN(2)
	default:
		n, err = r.uintN(4)
	}
	if err != nil {
		return 0, err
	}
	// Every element takes at least one byte (two for a map entry): a count beyond what is
	// left is a lie, refused before anything is allocated for it.
	per := uint64(1)
	if want == famMap {
		per = 2
	}
	if n > uint64(len(r.buf)-r.off)/per {
		return 0, errTruncated
	}
	if r.depth >= maxDepth {
		return 0, errTooDeep
	}
	r.depth++
	return int(n), nil
}

// leave closes the map or array opened last.
func (r *reader) leave() { r.depth-- }

// rawString reads a str (or, tolerantly, a bin) and returns its bytes, aliasing the buffer.
func (r *reader) rawString(allowBin bool, want string) ([]byte, error) {
	b, err := r.peek()
	if err != nil {
		return nil, err
	}
	fam := familyOf(b)
	if fam != famStr && !(allowBin && fam == famBin) {
		return nil, &typeError{want, fam}
	}
	r.off++
	var n uint64
	switch {
	case b >= 0xa0 && b <= 0xbf:
		n = uint64(b & 0x1f)
	case b == 0xd9 || b == 0xc4:
		n, err = r.uintN(1)
	case b == 0xda || b == 0xc5:
		n, err = r.uintN(2)
	default:
		n, err = r.uintN(4)
	}
	if err != nil {
		return nil, err
	}
	return r.take(n)
}

// str reads a string field: str, or nil as "". Its bytes are copied.
func (r *reader) str() (string, error) {
	if r.isNil() {
		return "", nil
	}
	b, err := r.rawString(false, "str")
	return string(b), err
}

// bytes reads a payload field: bin or str, or nil as empty. Its bytes are copied, so the
// result outlives the input buffer. An empty payload is a non-nil empty slice.
func (r *reader) bytes() ([]byte, error) {
	if r.isNil() {
		return []byte{}, nil
	}
	b, err := r.rawString(true, "bin")
	if err != nil {
		return nil, err
	}
	return append([]byte{}, b...), nil
}

// integer reads any msgpack integer: its magnitude and whether it is negative.
func (r *reader) integer() (magnitude uint64, negative bool, err error) {
	b, err := r.peek()
	if err != nil {
		return 0, false, err
	}
	switch familyOf(b) {
	case famUint:
		r.off++
		if b <= 0x7f {
			return uint64(b), false, nil
		}
		v, err := r.uintN(1 << (b - 0xcc))
		return v, false, err
	case famInt:
		r.off++
		var v int64
		if b >= 0xe0 {
			v = int64(int8(b))
		} else {
			u, err := r.uintN(1 << (b - 0xd0))
			if err != nil {
				return 0, false, err
			}
			switch b {
			case 0xd0:
				v = int64(int8(u))
			case 0xd1:
				v = int64(int16(u))
			case 0xd2:
				v = int64(int32(u))
			default:
				v = int64(u)
			}
		}
		if v < 0 {
			return uint64(-(v + 1)) + 1, true, nil
		}
		return uint64(v), false, nil
	}
	return 0, false, &typeError{"integer", familyOf(b)}
}

// uint reads an unsigned field of at most max: any integer width, or nil as 0.
func (r *reader) uint(max uint64) (uint64, error) {
	if r.isNil() {
		return 0, nil
	}
	v, negative, err := r.integer()
	if err != nil {
		return 0, err
	}
	if negative || v > max {
		sign := ""
		if negative {
			sign = "-"
		}
		return 0, errors.New("integer " + sign + strconv.FormatUint(v, 10) + " out of range 0.." + strconv.FormatUint(max, 10))
	}
	return v, nil
}

// bool reads a boolean field, or nil as false.
func (r *reader) bool() (bool, error) {
	if r.isNil() {
		return false, nil
	}
	b, err := r.peek()
	if err != nil {
		return false, err
	}
	if familyOf(b) != famBool {
		return false, &typeError{"bool", familyOf(b)}
	}
	r.off++
	return b == 0xc3, nil
}

// skip consumes one value of any type.
func (r *reader) skip() error {
	b, err := r.peek()
	if err != nil {
		return err
	}
	switch fam := familyOf(b); fam {
	case famNil, famBool:
		r.off++
	case famUint, famInt:
		_, _, err = r.integer()
	case famFloat:
		r.off++
		_, err = r.take(uint64(4 + 4*(b-0xca)))
	case famStr, famBin:
		_, err = r.rawString(true, "")
	case famArray, famMap:
		var n int
		if fam == famArray {
			n, err = r.arrayLen()
		} else {
			n, err = r.mapLen()
			n *= 2
		}
		if err != nil {
			return err
		}
		for i := 0; i < n && err == nil; i++ {
			err = r.skip()
		}
		r.leave()
	case famExt:
		_, err = r.ext()
	default:
		err = &typeError{"a value", fam}
	}
	return err
}

// ext reads an extension value.
func (r *reader) ext() (Ext, error) {
	b, _ := r.peek()
	r.off++
	var n uint64
	var err error
	switch {
	case b >= 0xd4 && b <= 0xd8:
		n = 1 << (b - 0xd4)
	default:
		n, err = r.uintN(1 << (b - 0xc7))
	}
	if err != nil {
		return Ext{}, err
	}
	typ, err := r.take(1)
	if err != nil {
		return Ext{}, err
	}
	data, err := r.take(n)
	if err != nil {
		return Ext{}, err
	}
	return Ext{Type: int8(typ[0]), Data: append([]byte{}, data...)}, nil
}

// value reads any value into the Go types documented on InitContext.Config.
func (r *reader) value() (any, error) {
	b, err := r.peek()
	if err != nil {
		return nil, err
	}
	switch fam := familyOf(b); fam {
	case famNil:
		r.off++
		return nil, nil
	case famBool:
		r.off++
		return b == 0xc3, nil
	case famUint, famInt:
		v, negative, err := r.integer()
		if err != nil {
			return nil, err
		}
		if negative {
			return -int64(v-1) - 1, nil
		}
		if v > math.MaxInt64 {
			return v, nil
		}
		return int64(v), nil
	case famFloat:
		r.off++
		if b == 0xca {
			u, err := r.uintN(4)
			return float64(math.Float32frombits(uint32(u))), err
		}
		u, err := r.uintN(8)
		return math.Float64frombits(u), err
	case famStr:
		s, err := r.rawString(false, "str")
		return string(s), err
	case famBin:
		s, err := r.rawString(true, "bin")
		return append([]byte{}, s...), err
	case famArray:
		n, err := r.arrayLen()
		if err != nil {
			return nil, err
		}
		defer r.leave()
		values := make([]any, 0, n)
		for i := 0; i < n; i++ {
			v, err := r.value()
			if err != nil {
				return nil, err
			}
			values = append(values, v)
		}
		return values, nil
	case famMap:
		return r.table()
	case famExt:
		return r.ext()
	default:
		return nil, &typeError{"a value", fam}
	}
}

// table reads a map with string keys into a Go map; a later duplicate key wins.
func (r *reader) table() (map[string]any, error) {
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	defer r.leave()
	table := make(map[string]any, n)
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		v, err := r.value()
		if err != nil {
			return nil, err
		}
		table[string(key)] = v
	}
	return table, nil
}

// writer builds msgpack in the shortest forms, as rmp-serde writes them.
type writer struct {
	buf []byte
}

func (w *writer) header(fix byte, fixMax int, n int, codes [3]byte) {
	switch {
	case n <= fixMax:
		w.buf = append(w.buf, fix|byte(n))
	case codes[0] != 0 && n <= math.MaxUint8:
		w.buf = append(w.buf, codes[0], byte(n))
	case n <= math.MaxUint16:
		w.buf = append(w.buf, codes[1])
		w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(n))
	default:
		w.buf = append(w.buf, codes[2])
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(n))
	}
}

func (w *writer) mapHeader(n int)   { w.header(0x80, 15, n, [3]byte{0, 0xde, 0xdf}) }
func (w *writer) arrayHeader(n int) { w.header(0x90, 15, n, [3]byte{0, 0xdc, 0xdd}) }

func (w *writer) str(s string) {
	w.header(0xa0, 31, len(s), [3]byte{0xd9, 0xda, 0xdb})
	w.buf = append(w.buf, s...)
}

func (w *writer) bin(b []byte) {
	switch {
	case len(b) <= math.MaxUint8:
		w.buf = append(w.buf, 0xc4, byte(len(b)))
	case len(b) <= math.MaxUint16:
		w.buf = append(w.buf, 0xc5)
		w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(len(b)))
	default:
		w.buf = append(w.buf, 0xc6)
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(b)))
	}
	w.buf = append(w.buf, b...)
}

func (w *writer) uint(v uint64) {
	switch {
	case v <= 0x7f:
		w.buf = append(w.buf, byte(v))
	case v <= math.MaxUint8:
		w.buf = append(w.buf, 0xcc, byte(v))
	case v <= math.MaxUint16:
		w.buf = append(w.buf, 0xcd)
		w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(v))
	case v <= math.MaxUint32:
		w.buf = append(w.buf, 0xce)
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(v))
	default:
		w.buf = append(w.buf, 0xcf)
		w.buf = binary.BigEndian.AppendUint64(w.buf, v)
	}
}

func (w *writer) int(v int64) {
	switch {
	case v >= 0:
		w.uint(uint64(v))
	case v >= -32:
		w.buf = append(w.buf, byte(int8(v)))
	case v >= math.MinInt8:
		w.buf = append(w.buf, 0xd0, byte(int8(v)))
	case v >= math.MinInt16:
		w.buf = append(w.buf, 0xd1)
		w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(int16(v)))
	case v >= math.MinInt32:
		w.buf = append(w.buf, 0xd2)
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(int32(v)))
	default:
		w.buf = append(w.buf, 0xd3)
		w.buf = binary.BigEndian.AppendUint64(w.buf, uint64(v))
	}
}

func (w *writer) bool(v bool) {
	if v {
		w.buf = append(w.buf, 0xc3)
	} else {
		w.buf = append(w.buf, 0xc2)
	}
}

// value writes a config value. Maps are written with their keys sorted bytewise, as the host
// writes them; types outside InitContext.Config's list are written as nil.
func (w *writer) value(v any) {
	switch v := v.(type) {
	case nil:
		w.buf = append(w.buf, 0xc0)
	case bool:
		w.bool(v)
	case int:
		w.int(int64(v))
	case int8:
		w.int(int64(v))
	case int16:
		w.int(int64(v))
	case int32:
		w.int(int64(v))
	case int64:
		w.int(v)
	case uint:
		w.uint(uint64(v))
	case uint8:
		w.uint(uint64(v))
	case uint16:
		w.uint(uint64(v))
	case uint32:
		w.uint(uint64(v))
	case uint64:
		w.uint(v)
	case float32:
		w.buf = append(w.buf, 0xca)
		w.buf = binary.BigEndian.AppendUint32(w.buf, math.Float32bits(v))
	case float64:
		w.buf = append(w.buf, 0xcb)
		w.buf = binary.BigEndian.AppendUint64(w.buf, math.Float64bits(v))
	case string:
		w.str(v)
	case []byte:
		w.bin(v)
	case []any:
		w.arrayHeader(len(v))
		for _, item := range v {
			w.value(item)
		}
	case []string:
		w.arrayHeader(len(v))
		for _, item := range v {
			w.str(item)
		}
	case map[string]any:
		w.mapHeader(len(v))
		for _, key := range sortedKeys(v) {
			w.str(key)
			w.value(v[key])
		}
	case map[string]string:
		w.stringMap(v)
	case Ext:
		w.ext(v)
	default:
		w.buf = append(w.buf, 0xc0)
	}
}

func (w *writer) stringMap(m map[string]string) {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	w.mapHeader(len(keys))
	for _, key := range keys {
		w.str(key)
		w.str(m[key])
	}
}

func (w *writer) ext(e Ext) {
	n := len(e.Data)
	switch {
	case n == 1 || n == 2 || n == 4 || n == 8 || n == 16:
		code := byte(0xd4)
		for size := 1; size < n; size *= 2 {
			code++
		}
		w.buf = append(w.buf, code)
	case n <= math.MaxUint8:
		w.buf = append(w.buf, 0xc7, byte(n))
	case n <= math.MaxUint16:
		w.buf = append(w.buf, 0xc8)
		w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(n))
	default:
		w.buf = append(w.buf, 0xc9)
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(n))
	}
	w.buf = append(w.buf, byte(e.Type))
	w.buf = append(w.buf, e.Data...)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}
