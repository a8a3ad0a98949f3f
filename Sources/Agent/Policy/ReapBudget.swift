/// The reconnect-storm budget: how many connections the agent may end, node-wide. Every socket
/// ended on an agent's own judgement comes out of it, whatever the rule (dead, drain, stuck).
///
/// A token bucket: `burst` tokens at most, refilled at `perSecond`. A dead backend's reap may take
/// the whole bucket at once (its clients are already cut off; ending their sockets only tells them),
/// while paced closes take a few a second. A pass reserves its limit when it is decided and settles
/// when it comes back: what it did not end returns. The bucket refills only up to the burst less
/// what is still reserved, so a reservation that comes back unused never lets more than the burst
/// go within any moment (a cap, checked by the simulation over every window).
public struct ReapBudget: Sendable, Equatable {
    public var perSecond: Int
    public var burst: Int
    public private(set) var tokens: Double
    /// Reserved by passes decided and not yet come back.
    public private(set) var reserved: Double = 0
    private var refilledAt: ContinuousClock.Instant?

    public init(perSecond: Int, burst: Int) {
        self.perSecond = perSecond
        self.burst = burst
        self.tokens = Double(burst)
    }

    /// Brings the bucket up to `now`.
    public mutating func refill(at now: ContinuousClock.Instant) {
        if let refilledAt, now > refilledAt {
            tokens = max(tokens, min(Double(burst) - reserved, tokens + (now - refilledAt).seconds * Double(perSecond)))
        }
        refilledAt = max(refilledAt ?? now, now)
    }

    /// How many sockets a pass may end now.
    public func available() -> Int { max(0, Int(tokens.rounded(.down))) }

    /// How long until `count` are available at the refill rate (zero if they are now): a debt of
    /// forwarded flows takes its own time to pay back. Whole milliseconds, rounded up: a deadline
    /// finer than the clock that wakes the agent (the simulation's is a millisecond) would be woken
    /// for just before it, find nothing due, and be woken for again at once.
    public func timeUntilAvailable(_ count: Int) -> Duration {
        let missing = Double(count) - tokens
        guard missing > 0 else { return .zero }
        return .milliseconds(Int64((missing / Double(max(perSecond, 1)) * 1000).rounded(.up)))
    }

    /// Sets aside what a pass decided now may end.
    public mutating func reserve(_ sockets: Int) {
        tokens -= Double(sockets)
        reserved += Double(sockets)
    }

    /// A pass came back: what it did not end returns; more than it was granted is debt.
    public mutating func settle(granted: Int, ended: Int) {
        reserved = max(0, reserved - Double(granted))
        tokens += Double(granted - ended)
    }

    /// A new configuration's rate and burst; what was spent stays spent.
    public mutating func resize(perSecond: Int, burst: Int) {
        self.perSecond = perSecond
        self.burst = burst
        tokens = min(tokens, Double(burst) - reserved)
    }
}
