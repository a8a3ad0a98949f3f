import OS
import SystemPackage

/// What an ended heartbeat connection means, and when the next one is made. Only a connection that
/// was established and then stopped being acknowledged says anything about the backend's health:
/// a refusal, a reset or a FIN comes from a live kernel (the backend restarted, closed an idle
/// connection, overflowed its backlog), so it is counted and the heartbeat made again, nothing more.
public enum HeartbeatRules {
    public enum Cause: String, Sendable, CaseIterable {
        /// ETIMEDOUT (keepalive or SYN unanswered past the user timeout), or EHOSTUNREACH (an ICMP
        /// error the kernel reports in its place when the timeout comes).
        case timeout
        case refused
        case reset
        /// The peer's FIN.
        case closed
        case other
    }

    /// A heartbeat's state, as /status shows it.
    public enum Phase: Sendable, Equatable, CustomStringConvertible {
        case connecting
        case up
        case retrying(after: Cause)

        public var description: String {
            switch self {
            case .connecting: "connecting"
            case .up: "up"
            case .retrying(let cause): "retrying after \(cause.rawValue)"
            }
        }
    }

    /// The user timeout: the kernel gives up one second after the last acknowledgement with a probe
    /// out. Keepalive is counted in whole seconds anyway, and the verdict is the probes', so a longer
    /// one would only delay the signal.
    public static let options = HeartbeatOptions(idleSeconds: 1, intervalSeconds: 1, count: 1, userTimeoutMilliseconds: 1000)
    /// A heartbeat that lived this long was fine: the next failure starts the backoff over.
    public static let stableAfter: Duration = .seconds(10)
    public static let firstRetry: Duration = .seconds(1)

    /// nil: the peer's FIN (a read of 0 bytes).
    public static func cause(of errno: Errno?) -> Cause {
        switch errno {
        case nil: .closed
        case .timedOut?, .noRouteToHost?: .timeout
        case .connectionRefused?: .refused
        case .connectionReset?, .brokenPipe?: .reset
        default: .other
        }
    }

    /// A signal only when an established connection timed out: a connect that times out says no
    /// more than a failed probe, which the regular probes already say.
    public static func isSignal(_ cause: Cause, established: Bool) -> Bool {
        cause == .timeout && established
    }

    /// The wait before the next connection after `failures` in a row: a second, doubling, up to twice
    /// the pool's probe interval (at least two seconds). A backend that closes every heartbeat at once
    /// costs it a connection per interval or two, not a busy loop.
    public static func backoff(afterFailures failures: Int, probeInterval: Duration) -> Duration {
        let ceiling = max(probeInterval, firstRetry) * 2
        let doubled = firstRetry * (1 << min(max(failures - 1, 0), 16))
        return min(doubled, ceiling)
    }
}
