import Netlink
import Testing

@testable import Conntrack

/// The check walks bytes by index for speed; it must read them exactly as `NetlinkAttributes` does.
@Suite struct ConntrackAttributeCheckTests {
    /// The same rules, read through the attribute iterator the rest of the code uses.
    static func reference(_ attributes: NetlinkAttributes, table: ConntrackAttributeCheck.Table) -> Bool {
        let rules = ConntrackAttributeCheck.definitions[table] ?? [:]
        return attributes.allSatisfy { attribute in
            switch rules[attribute.type] ?? .unchecked {
            case .unchecked: true
            case .size(let size): attribute.value.count == size
            case .string: attribute.value.last == 0
            case .nested(let inner): attribute.value.isEmpty || (attribute.value.count >= 4 && reference(attribute.nested, table: inner))
            }
        }
    }

    /// Random attribute trees (right and wrong sizes, nesting, truncation, junk) from a fixed seed.
    @Test func agreesWithTheAttributeIteratorOnRandomMessages() {
        var generator = SplitMix(seed: 0x5EED)
        var refused = 0
        for _ in 0..<20_000 {
            var bytes = Self.attributes(depth: 0, using: &generator)
            if generator.next() % 4 == 0 { bytes.removeLast(Int(generator.next() % UInt64(bytes.count + 1))) }
            let slice = bytes[...]
            let expected = Self.reference(NetlinkAttributes(slice), table: .message)
            #expect(ConntrackAttributeCheck.accepts(NetlinkAttributes(slice)) == expected, "\(bytes)")
            if !expected { refused += 1 }
        }
        #expect(refused > 2_000 && refused < 18_000, "both answers exercised: \(refused) refused")
    }

    static func attributes(depth: Int, using generator: inout SplitMix) -> [UInt8] {
        var bytes: [UInt8] = []
        for _ in 0..<Int(generator.next() % 4) {
            let type = UInt16(generator.next() % 26) | (generator.next() % 2 == 0 ? 0x8000 : 0)
            var value: [UInt8]
            if depth < 3, generator.next() % 3 == 0 {
                value = attributes(depth: depth + 1, using: &generator)
            } else {
                let size = [0, 1, 2, 3, 4, 8, 16][Int(generator.next() % 7)]
                value = (0..<size).map { _ in UInt8(truncatingIfNeeded: generator.next() % 3) }
            }
            var length = UInt16(4 + value.count)
            if generator.next() % 16 == 0 { length = UInt16(generator.next() % 40) }  // a lying length
            bytes += [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(type & 0xFF), UInt8(type >> 8)] + value
            bytes += [UInt8](repeating: 0, count: (4 - value.count % 4) % 4)
        }
        return bytes
    }
}

/// A small seeded generator: the same cases every run.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
