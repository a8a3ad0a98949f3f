import Netlink

/// The sizes libnetfilter_conntrack insists on: version 1.0.9 (Debian 12) ends the process with
/// exit(1) ("kernel ABI is broken") when one attribute it reads has another size, so a message is
/// measured here first and refused whole. The rules are the library's own (parse_mnl.c), checked
/// against the installed library by Tests/Fuzz/probe_conntrack_sizes.py.
///
/// Every entry of every dump passes here: the walk reads lengths and types by index, with no slice
/// or attribute value made per attribute, and the rules are plain values in flat tables (a
/// dictionary of indirect enums per level cost a tenth of a 20,000-entry purge's user time).
enum ConntrackAttributeCheck {
    enum Rule: Equatable {
        /// Not read by the library: anything goes.
        case unchecked
        /// Exactly this many bytes.
        case size(Int)
        /// At least one byte, the last a NUL (the library copies it with strdup).
        case string
        /// Empty, or attributes checked by the rules of that table.
        case nested(Table)
    }

    enum Table: Int, CaseIterable {
        case message, tuple, tupleIP, tupleProto, protocolInfo, tcp, dccp, sctp, helper, counters, sequenceAdjustment
        case timestamp, synproxy
    }

    /// CTA_* of nfnetlink_conntrack.h, by table: attribute type -> rule.
    static let definitions: [Table: [UInt16: Rule]] = [
        .message: [
            1: .nested(.tuple), 2: .nested(.tuple), 3: .size(4), 4: .nested(.protocolInfo), 5: .nested(.helper), 7: .size(4),
            8: .size(4), 9: .nested(.counters), 10: .nested(.counters), 11: .size(4), 12: .size(4), 14: .nested(.tuple),
            15: .nested(.sequenceAdjustment), 16: .nested(.sequenceAdjustment), 17: .size(4), 18: .size(2),
            19: .nested(.helper), 20: .nested(.timestamp), 24: .nested(.synproxy),
        ],
        .tuple: [1: .nested(.tupleIP), 2: .nested(.tupleProto), 3: .size(2)],  // IP, PROTO, ZONE
        .tupleIP: [1: .size(4), 2: .size(4), 3: .size(16), 4: .size(16)],  // V4_SRC, V4_DST, V6_SRC, V6_DST
        // NUM, SRC_PORT, DST_PORT, ICMP_ID, ICMP_TYPE, ICMP_CODE, ICMPV6_ID, ICMPV6_TYPE, ICMPV6_CODE
        .tupleProto: [1: .size(1), 2: .size(2), 3: .size(2), 4: .size(2), 5: .size(1), 6: .size(1), 7: .size(2), 8: .size(1), 9: .size(1)],
        .protocolInfo: [1: .nested(.tcp), 2: .nested(.dccp), 3: .nested(.sctp)],
        .tcp: [1: .size(1), 2: .size(1), 3: .size(1), 4: .size(2), 5: .size(2)],  // state, wscales, flags
        .dccp: [1: .size(1), 2: .size(1), 3: .size(8)],  // state, role, handshake seq
        .sctp: [1: .size(1), 2: .size(4), 3: .size(4)],  // state, vtags
        .helper: [1: .string],  // CTA_HELP_NAME, CTA_SECCTX_NAME
        .counters: [1: .size(8), 2: .size(8), 3: .size(4), 4: .size(4)],
        .sequenceAdjustment: [1: .size(4), 2: .size(4), 3: .size(4)],
        .timestamp: [1: .size(8), 2: .size(8)],
        .synproxy: [1: .size(4), 2: .size(4), 3: .size(4)],
    ]

    /// `definitions` flattened: table t's rule for type k is `rules[starts[t] + k]` when k < `counts[t]`.
    private static let (rules, starts, counts): ([Rule], [Int], [Int]) = {
        var rules: [Rule] = [], starts: [Int] = [], counts: [Int] = []
        for table in Table.allCases {
            let definition = definitions[table] ?? [:]
            let count = Int(definition.keys.max() ?? 0) + 1
            starts.append(rules.count)
            counts.append(count)
            rules += (0..<count).map { definition[UInt16($0)] ?? .unchecked }
        }
        return (rules, starts, counts)
    }()

    /// Whether every attribute the library would check has the size it wants.
    static func accepts(_ attributes: NetlinkAttributes) -> Bool {
        accepts(attributes.bytes, table: .message)
    }

    /// Walks the attributes in `bytes` as `NetlinkAttributes` does: a length under 4 or past the end
    /// ends the walk (the rest is not attributes), an unpadded last one is read whole.
    static func accepts(_ bytes: ArraySlice<UInt8>, table: Table) -> Bool {
        var offset = bytes.startIndex
        while bytes.endIndex - offset >= 4 {
            let length = Int(UInt16(littleEndian: UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8))
            let type = Int(UInt16(littleEndian: UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8) & 0x3FFF)
            guard length >= 4, length <= bytes.endIndex - offset else { return true }
            let value = (offset + 4)..<(offset + length)
            if type < counts[table.rawValue] {
                switch rules[starts[table.rawValue] + type] {
                case .unchecked: break
                case .size(let size): guard value.count == size else { return false }
                case .string: guard !value.isEmpty, bytes[value.upperBound - 1] == 0 else { return false }
                case .nested(let inner):
                    guard value.isEmpty || (value.count >= 4 && accepts(bytes[value], table: inner)) else { return false }
                }
            }
            offset = min(offset + (length + 3) & ~3, bytes.endIndex)
        }
        return true
    }
}
