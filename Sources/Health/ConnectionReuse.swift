/// When an http/https probe may ride the backend's kept-alive connection (`probe.reuse`), and how a
/// probe on it is judged. A kept connection proves the backend still serves an old connection, not
/// that it accepts new ones: a backend whose listener is gone, or whose SYNs are dropped, keeps
/// answering on it (haproxy#2447). So a fresh connection comes after any failure and at least every
/// `reconnectEvery` probes, and a probe on a fresh connection is judged as it always was.
public struct ConnectionReuse: Sendable, Equatable {
    public enum Connection: Sendable, Equatable {
        case kept, fresh
    }

    /// How a probe ended, as far as the connection goes.
    public enum Ending: Sendable, Equatable {
        /// A whole response came and the server lets the connection stay open.
        case keptOpen
        /// The probe succeeded, but the server closes the connection (`Connection: close`).
        case closedByServer
        /// The probe failed: the connection is not trusted again.
        case failed
    }

    /// Probes one connection serves at most, the fresh one that opened it included.
    public let reconnectEvery: Int
    public private(set) var hasKeptConnection = false
    /// Probes the kept connection has served so far.
    public private(set) var served = 0

    public init(reconnectEvery: Int) {
        precondition(reconnectEvery >= 1, "reconnect_every is validated by the configuration")
        self.reconnectEvery = reconnectEvery
    }

    /// The connection the next probe uses.
    public var next: Connection { hasKeptConnection && served < reconnectEvery ? .kept : .fresh }

    /// Records how a probe on `connection` ended.
    public mutating func finished(on connection: Connection, _ ending: Ending) {
        guard ending == .keptOpen else {
            hasKeptConnection = false
            served = 0
            return
        }
        served = connection == .fresh ? 1 : served + 1
        hasKeptConnection = served < reconnectEvery
        if !hasKeptConnection { served = 0 }
    }

    /// A probe on a kept connection that got no response in time. If the backend's kernel has not
    /// even acknowledged the request, nothing answered, as when a fresh connect gets no SYN-ACK:
    /// a silent death must read the same either way, or the policy would take a dead backend for
    /// an unhealthy one and never reap it. If the request was acknowledged, something is there and
    /// not answering: unhealthy, as after a fresh connect.
    ///
    /// `unacknowledgedSegments` and `millisecondsSinceLastAck` are the kernel's (tcp_info) for the
    /// kept socket; `millisecondsSinceRequest` is how long ago the request was written. A request
    /// still queued unsent (a local drop) has no unacknowledged segment but no ACK since either.
    public static func silenceFailure(
        unacknowledgedSegments: UInt32, millisecondsSinceLastAck: UInt32, millisecondsSinceRequest: UInt32
    ) -> ProbeFailure {
        let acknowledged = unacknowledgedSegments == 0 && millisecondsSinceLastAck < millisecondsSinceRequest
        return acknowledged ? .unhealthy : .unreachable
    }

    /// A kept connection the server closed (or reset) before any byte of a response: it ended the
    /// idle connection as this probe was sent, a race every keep-alive client meets. Such a probe
    /// is made again at once on a fresh connection rather than counted as a failure.
    public static func retriesFresh(on connection: Connection, closedBeforeResponse: Bool) -> Bool {
        connection == .kept && closedBeforeResponse
    }
}
