/// Reads fixed-width fields from received bytes without pointers; a short read yields nil.
public struct ByteReader: Sendable {
    public let bytes: ArraySlice<UInt8>

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
    }

    public var count: Int { bytes.count }

    @inlinable func integer<T: FixedWidthInteger>(at offset: Int, bigEndian: Bool) -> T? {
        let size = T.bitWidth / 8
        guard offset >= 0, offset + size <= bytes.count else { return nil }
        let start = bytes.startIndex + offset
        var value: T = 0
        for index in 0..<size {
            let byte = T(bytes[start + (bigEndian ? index : size - 1 - index)])
            value = value << 8 | byte
        }
        return value
    }

    public func hostOrder<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T? {
        integer(at: offset, bigEndian: false)
    }

    public func networkOrder<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T? {
        integer(at: offset, bigEndian: true)
    }

    public func slice(at offset: Int, count: Int) -> ArraySlice<UInt8>? {
        guard offset >= 0, count >= 0, offset + count <= bytes.count else { return nil }
        let start = bytes.startIndex + offset
        return bytes[start..<(start + count)]
    }
}
