import SockDiag

/// Decides whether a connection is silently blackholed: data waits to be acknowledged and no ACK
/// has come for `after`, while the backend may well look healthy to every probe (incident 3).
///
/// `last_ack_recv` alone is the age of the last ACK, not of the oldest unacknowledged byte: a
/// healthy connection idle for a minute that has just written shows a minute-old ACK for one RTT.
/// So a suspicion only condemns with evidence that the data has waited: a retransmit backoff, or
/// the same suspicion on the previous scan of the same socket.
///
/// Never condemned: idle connections (nothing unacknowledged or queued, whatever their keepalive
/// probes do; judging those is the kernel keepalive's job), and zero-window connections (the peer
/// ACKs every window probe, so the last ACK stays fresh).
public struct StuckRule: Sendable, Equatable {
    public var afterMilliseconds: UInt32
    /// Sockets (by cookie) found suspicious on the previous scan.
    public var previouslySuspected: Set<UInt64>
    /// When set, no socket outside it is condemned. The agent judges a scan's listing for the whole
    /// pool first (a local fault, a connection held since one); the dump its purge makes next must not
    /// end more than that judgement allowed, only less (a socket acknowledged in between is spared).
    public var onlyAmong: Set<UInt64>?

    public init(afterMilliseconds: UInt32, previouslySuspected: Set<UInt64> = [], onlyAmong: Set<UInt64>? = nil) {
        self.afterMilliseconds = afterMilliseconds
        self.previouslySuspected = previouslySuspected
        self.onlyAmong = onlyAmong
    }

    /// idiag_timer of a socket whose peer's window is shut (ICSK_TIME_PROBE0).
    public static let zeroWindowProbeTimer: UInt8 = 4

    public func isSuspicious(_ socket: DiagnosedSocket) -> Bool {
        guard socket.transport == .tcp, socket.state == .established, let info = socket.tcpInfo else { return false }
        // A drop beyond the host leaves segments in flight (unacked); a local drop leaves them
        // queued and never sent (Send-Q). Both are data waiting.
        let dataWaiting = info.unacked > 0 || socket.sendQueue > 0
        // A closed window: the peer is slow to read, not gone, while it acknowledges every window
        // probe (the kernel zeroes the unanswered-probe count on each ACK). Its last ACK can be as
        // old as the probe interval, which backs off to two minutes, however long the window stays shut.
        if socket.timer == Self.zeroWindowProbeTimer, info.unacked == 0, info.probes == 0 { return false }
        return dataWaiting && info.lastAckReceivedMilliseconds >= afterMilliseconds
    }

    public func condemns(_ socket: DiagnosedSocket) -> Bool {
        guard isSuspicious(socket), let info = socket.tcpInfo, onlyAmong?.contains(socket.id.cookie) ?? true else { return false }
        return info.backoff > 0 || info.retransmits > 0 || previouslySuspected.contains(socket.id.cookie)
    }

    /// The figures that condemned a socket, for its audit line.
    public static func evidence(_ socket: DiagnosedSocket) -> String {
        guard let info = socket.tcpInfo else { return "no tcp_info" }
        return "unacked=\(info.unacked) send_q=\(socket.sendQueue) last_ack_ms=\(info.lastAckReceivedMilliseconds) "
            + "retransmits=\(info.retransmits) backoff=\(info.backoff) timer=\(socket.timer)"
    }
}
