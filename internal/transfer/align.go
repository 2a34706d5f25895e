package transfer

import "unsafe"

// ioAlign is the buffer, offset and length alignment O_DIRECT needs: 4 KiB
// covers every logical block size in use.
const ioAlign = 4096

// alignedBuf returns n bytes whose first byte is ioAlign-aligned.
func alignedBuf(n int) []byte { return alignedBufTo(n, ioAlign) }

// alignedBufTo returns n bytes whose first byte is a multiple of a (a power
// of two). Go's heap does not move objects, so the alignment holds for the
// buffer's life.
func alignedBufTo(n, a int) []byte {
	b := make([]byte, n+a)
	skip := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & uintptr(a-1))
	return b[skip : skip+n : skip+n]
}

// isAligned reports whether a write of b at off can go through O_DIRECT.
func isAligned(b []byte, off int64) bool {
	return len(b) > 0 && len(b)%ioAlign == 0 && off%ioAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(b)))%ioAlign == 0
}
