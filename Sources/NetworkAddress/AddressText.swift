/// Addresses written as ASCII bytes into a caller's buffer: a report of 20,000 sockets names 40,000
/// endpoints, and string interpolation of four octets and a port cost more than the purge's parsing.
extension IPAddress {
    public func appendText(to bytes: inout [UInt8]) {
        switch self {
        case .v4(let value):
            bytes.appendDecimal(UInt64(value >> 24))
            bytes.append(UInt8(ascii: "."))
            bytes.appendDecimal(UInt64(value >> 16 & 0xFF))
            bytes.append(UInt8(ascii: "."))
            bytes.appendDecimal(UInt64(value >> 8 & 0xFF))
            bytes.append(UInt8(ascii: "."))
            bytes.appendDecimal(UInt64(value & 0xFF))
        case .v6:
            bytes.append(contentsOf: description.utf8)
        }
    }
}

extension Endpoint {
    /// `a.b.c.d:port`, or `[v6]:port`.
    public func appendText(to bytes: inout [UInt8]) {
        if address.family == .v6 { bytes.append(UInt8(ascii: "[")) }
        address.appendText(to: &bytes)
        if address.family == .v6 { bytes.append(UInt8(ascii: "]")) }
        bytes.append(UInt8(ascii: ":"))
        bytes.appendDecimal(UInt64(port))
    }
}

extension [UInt8] {
    /// The decimal digits of `value`, most significant first.
    public mutating func appendDecimal(_ value: UInt64) {
        // Most significant digit first, so nothing is written twice (a reversed slice cost a
        // retain and a release per number).
        var divisor: UInt64 = 1
        while value / divisor >= 10 { divisor *= 10 }
        repeat {
            append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
            divisor /= 10
        } while divisor > 0
    }
}
