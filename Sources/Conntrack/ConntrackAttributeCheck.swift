import Netlink

/// The sizes libnetfilter_conntrack insists on: version 1.0.9 (Debian 12) ends the process with
/// exit(1) ("kernel ABI is broken") when one attribute it reads has another size, so a message is
/// measured here first and refused whole. The rules are the library's own (parse_mnl.c), checked
/// against the installed library by Tests/Fuzz/probe_conntrack_sizes.py.
enum ConntrackAttributeCheck {
    indirect enum Rule {
        /// Exactly this many bytes.
        case size(Int)
        /// At least one byte, the last a NUL (the library copies it with strdup).
        case string
        /// Empty, or attributes checked by `rules`.
        case nested([UInt16: Rule])
    }

    static let tuple: [UInt16: Rule] = [
        1: .nested([1: .size(4), 2: .size(4), 3: .size(16), 4: .size(16)]),  // CTA_TUPLE_IP: V4_SRC, V4_DST, V6_SRC, V6_DST
        // CTA_TUPLE_PROTO: NUM, SRC_PORT, DST_PORT, ICMP_ID, ICMP_TYPE, ICMP_CODE, ICMPV6_ID, ICMPV6_TYPE, ICMPV6_CODE
        2: .nested([1: .size(1), 2: .size(2), 3: .size(2), 4: .size(2), 5: .size(1), 6: .size(1), 7: .size(2), 8: .size(1), 9: .size(1)]),
        3: .size(2),  // CTA_TUPLE_ZONE
    ]
    static let counters: [UInt16: Rule] = [1: .size(8), 2: .size(8), 3: .size(4), 4: .size(4)]
    static let sequenceAdjustment: [UInt16: Rule] = [1: .size(4), 2: .size(4), 3: .size(4)]
    static let protocolInfo: [UInt16: Rule] = [
        1: .nested([1: .size(1), 2: .size(1), 3: .size(1), 4: .size(2), 5: .size(2)]),  // TCP: state, wscales, flags
        2: .nested([1: .size(1), 2: .size(1), 3: .size(8)]),  // DCCP: state, role, handshake seq
        3: .nested([1: .size(1), 2: .size(4), 3: .size(4)]),  // SCTP: state, vtags
    ]
    /// CTA_* of nfnetlink_conntrack.h, top level.
    static let message: [UInt16: Rule] = [
        1: .nested(tuple), 2: .nested(tuple), 3: .size(4), 4: .nested(protocolInfo), 5: .nested([1: .string]),
        7: .size(4), 8: .size(4), 9: .nested(counters), 10: .nested(counters), 11: .size(4), 12: .size(4), 14: .nested(tuple),
        15: .nested(sequenceAdjustment), 16: .nested(sequenceAdjustment), 17: .size(4), 18: .size(2), 19: .nested([1: .string]),
        20: .nested([1: .size(8), 2: .size(8)]), 24: .nested([1: .size(4), 2: .size(4), 3: .size(4)]),
    ]

    /// Whether every attribute the library would check has the size it wants.
    static func accepts(_ attributes: NetlinkAttributes, rules: [UInt16: Rule] = message) -> Bool {
        attributes.allSatisfy { attribute in
            switch rules[attribute.type] {
            case nil: true
            case .size(let size): attribute.value.count == size
            case .string: attribute.value.last == 0
            case .nested(let inner): attribute.value.isEmpty || (attribute.value.count >= 4 && accepts(attribute.nested, rules: inner))
            }
        }
    }
}
