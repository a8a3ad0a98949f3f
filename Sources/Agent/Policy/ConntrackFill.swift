/// How full the conntrack table is, judged with hysteresis. A full table drops every new flow's
/// first packet (the kernel logs "nf_conntrack: table full, dropping packet"): the agent's own
/// probes then fail and every backend looks down, and the all-down guard holds its reaps. The
/// operator must learn why, once, not from a flapping log line.
public struct ConntrackFill: Sendable, Equatable {
    /// At or above this share of the limit the table counts as full (the kernel begins evicting
    /// unreplied entries only at the limit itself, and drops once it cannot).
    public static let fullShare = 0.95
    /// Below this share it counts as no longer full.
    public static let clearShare = 0.90

    public enum Change: Sendable, Equatable {
        case becameFull(entries: Int, limit: Int)
        case noLongerFull(entries: Int, limit: Int)
    }

    public private(set) var full = false

    public init() {}

    /// Whether `entries` reach the full share of `limit`, with no memory of before.
    public static func isFull(entries: Int, limit: Int) -> Bool {
        limit > 0 && Double(entries) >= Double(limit) * fullShare
    }

    public mutating func observe(entries: Int, limit: Int) -> Change? {
        guard limit > 0 else { return nil }
        let share = Double(entries) / Double(limit)
        if !full, Self.isFull(entries: entries, limit: limit) {
            full = true
            return .becameFull(entries: entries, limit: limit)
        }
        if full, share < Self.clearShare {
            full = false
            return .noLongerFull(entries: entries, limit: limit)
        }
        return nil
    }
}
