/// How soon the retransmission watch looks at its sentinels again. A retransmission comes one RTO
/// after the data it repeats was sent, at the earliest, and the RTO is never below the route's
/// minimum (200 ms by default). While no sentinel has data out unacknowledged (no retransmission
/// timer runs), data sent after a look cannot be retransmitted before the shortest RTO has passed:
/// the next look may wait until `fast` before that, and still sees the timer running in time to
/// look every `fast` until it fires. So the watch wakes about 7 times a second instead of 20 on a
/// quiet node, and sees a retransmission as soon as it did.
public enum WatchCadence {
    /// The longest wait between looks, whatever the RTO: a sentinel picked since the last look
    /// (picks come every few seconds) is looked at by then.
    public static let slowest: Duration = .milliseconds(150)

    /// - Parameters:
    ///   - armed: a sentinel's retransmission or loss-probe timer runs (data out, unacknowledged).
    ///   - shortestRTO: the smallest RTO among the sentinels when they were picked; nil when unknown.
    ///   - watching: the watch has sentinels at all.
    public static func next(armed: Bool, shortestRTO: Duration?, watching: Bool, fast: Duration) -> Duration {
        guard watching else { return max(fast, slowest) }
        guard !armed, let shortestRTO else { return fast }
        return max(fast, min(slowest, shortestRTO - fast))
    }
}
