package wire

import (
	"errors"
	"strings"
	"testing"
)

// TestRead: a line up to the limit, newline or EOF ending it; one byte
// more is refused before it is decoded.
func TestRead(t *testing.T) {
	const limit = 40
	pad := func(n int) string { // a request line of exactly n bytes
		s := `{"v":1,"name":"`
		return s + strings.Repeat("x", n-len(s)-2) + `"}`
	}
	tests := []struct {
		name, in string
		wantErr  string
	}{
		{"at the limit", pad(limit) + "\n", ""},
		{"at the limit, EOF", pad(limit), ""},
		{"one byte over", pad(limit+1) + "\n", "line too long"},
		{"far over, no newline", strings.Repeat("x", 10*limit), "line too long"},
		{"empty", "", "EOF"},
		{"not JSON", "hello\n", "decode"},
		{"only the first line", pad(limit) + "\n" + "garbage", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			err := Read(strings.NewReader(tc.in), limit, &r)
			if tc.wantErr == "" {
				if err != nil || r.Version != 1 {
					t.Errorf("%+v, %v", r, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			if tc.wantErr == "line too long" && !errors.Is(err, ErrTooLong) {
				t.Errorf("%v is not ErrTooLong", err)
			}
		})
	}
}
