import Testing

@testable import NetworkAddress

/// Endpoints written as bytes read exactly as their text: what a report prints and a user pastes back.
@Suite struct AddressTextTests {
    @Test(arguments: [
        ("0.0.0.0:0", Endpoint(address: .v4(0), port: 0)),
        ("255.255.255.255:65535", Endpoint(address: .v4(.max), port: .max)),
        ("10.232.0.2:7000", Endpoint(address: .v4(0x0AE8_0002), port: 7000)),
        ("[fd00::5]:6443", Endpoint(address: IPAddress("fd00::5")!, port: 6443)),
        ("[::ffff:10.0.0.1]:80", Endpoint(address: IPAddress("::ffff:10.0.0.1")!, port: 80)),
    ])
    func endpointsReadAsTheirText(text: String, endpoint: Endpoint) throws {
        var bytes: [UInt8] = Array("x ".utf8)
        endpoint.appendText(to: &bytes)
        #expect(String(decoding: bytes, as: UTF8.self) == "x " + text, "appends, keeping what was there")
        #expect(endpoint.description == text)
        guard endpoint.port != 0 else { return }  // no destination names port 0
        let parsed = try Destination(parsing: text)
        #expect(parsed.prefix?.address == endpoint.address && parsed.prefix?.isSingleHost == true && parsed.port == endpoint.port)
    }

    @Test func decimalDigitsOfEveryMagnitude() {
        for value: UInt64 in [0, 7, 10, 99, 100, 65_535, 4_294_967_295, .max] {
            var bytes: [UInt8] = []
            bytes.appendDecimal(value)
            #expect(String(decoding: bytes, as: UTF8.self) == String(value))
        }
    }
}
