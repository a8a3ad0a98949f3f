import Glibc
import NetworkAddress
import Testing

/// IPv6 text is parsed in Swift; inet_pton is the reference it must agree with, case by case.
@Suite struct IPv6ParsingTests {
    static let cases = [
        "::", "::1", "1::", "fd00::3", "fd00:231::2", "2001:db8::8:800:200c:417a", "ff01::101",
        "1:2:3:4:5:6:7:8", "1:2:3:4:5:6::8", "1::3:4:5:6:7:8", "::ffff:10.0.0.3", "::10.0.0.3",
        "64:ff9b::192.0.2.33", "1:2:3:4:5:6:1.2.3.4", "FD00::ABCD", "0:0:0:0:0:0:0:0", "fe80::1:2:3:4",
        // refused
        "", ":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::1", "::1.2.3",
        "::1.2.3.256", "1.2.3.4::", "1:2:3:4:5:6:7:1.2.3.4", "::+1", "::-1", ":1::", "1::2:", " ::1",
        "::ffff:10.0.0.03x", "1:2:3:4:5:6:7::8", "::1:2:3:4:5:6:7:8",
    ]

    static func reference(_ text: String) -> [UInt8]? {
        var raw = in6_addr()
        guard inet_pton(AF_INET6, text, &raw) == 1 else { return nil }
        return withUnsafeBytes(of: raw) { Array($0) }
    }

    @Test(arguments: cases)
    func agreesWithInetPton(_ text: String) {
        let ours = IPAddress(text).flatMap { $0.family == .v6 ? $0.networkBytes : nil }
        #expect(ours == Self.reference(text), "\(text)")
    }
}
