/// The reconnect-storm budget: how many connections the agent may end, node-wide. Every socket
/// ended on an agent's own judgement comes out of it, whatever the rule (dead, drain, stuck).
///
/// A token bucket: `burst` tokens at most, refilled at `perSecond`. A dead backend's reap may take
/// the whole bucket at once (its clients are already cut off; ending their sockets only tells them),
/// while paced closes take a few a second. What a pass ends is paid after it ran, so a pass that
/// ends fewer than it was allowed costs only what it ended; the bucket can go into debt by what
/// passes running side by side took, and refills from there.
public struct ReapBudget: Sendable, Equatable {
    public var perSecond: Int
    public var burst: Int
    public private(set) var tokens: Double
    private var refilledAt: ContinuousClock.Instant?

    public init(perSecond: Int, burst: Int) {
        self.perSecond = perSecond
        self.burst = burst
        self.tokens = Double(burst)
    }

    /// Brings the bucket up to `now`.
    public mutating func refill(at now: ContinuousClock.Instant) {
        if let refilledAt, now > refilledAt {
            tokens = min(Double(burst), tokens + (now - refilledAt).seconds * Double(perSecond))
        }
        refilledAt = max(refilledAt ?? now, now)
    }

    /// How many sockets a pass may end now.
    public func available() -> Int { max(0, Int(tokens.rounded(.down))) }

    /// Pays for sockets a pass ended.
    public mutating func spend(_ sockets: Int) {
        tokens -= Double(sockets)
    }

    /// A new configuration's rate and burst; what was spent stays spent.
    public mutating func resize(perSecond: Int, burst: Int) {
        self.perSecond = perSecond
        self.burst = burst
        tokens = min(tokens, Double(burst))
    }
}
