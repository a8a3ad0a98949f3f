import SockDiag

/// Decides whether a connection is silently blackholed: data waits to be acknowledged and no ACK
/// has come for `after`, while the backend may well look healthy to every probe (incident 3).
///
/// `last_ack_recv` alone is the age of the last ACK, not of the oldest unacknowledged byte: a
/// healthy connection that writes once every few seconds (a lease renewal, a status update) shows an
/// ACK that old the moment it writes, and one lost segment later a retransmission too. So a suspicion
/// condemns only when the data itself has waited `after`: by what the kernel shows of one look (a
/// segment in flight: the retransmission backoff since it was first sent, and the time since the last
/// send), or by the caller's own earlier looks (`observedWaits`: data seen waiting then, no ACK since).
///
/// Never condemned: idle connections (nothing unacknowledged or queued, whatever their keepalive
/// probes do; judging those is the kernel keepalive's job), and zero-window connections (the peer
/// ACKs every window probe, so the last ACK stays fresh).
public struct StuckRule: Sendable, Equatable {
    public var afterMilliseconds: UInt32
    /// How long, by the caller's own earlier looks, each socket's data has waited (cookie to ms):
    /// seen waiting on an earlier look, with no ACK since.
    public var observedWaits: [UInt64: UInt32]
    /// A one-shot look (`purge --stuck`) has no earlier look to compare with: a retransmission or
    /// window-probe timer that fired is taken as evidence that the data has waited.
    public var firedTimerIsEvidence: Bool
    /// When set, no socket outside it is condemned. The agent judges a scan's listing for the whole
    /// pool first (a local fault, a connection held since one); the dump its purge makes next must not
    /// end more than that judgement allowed, only less (a socket acknowledged in between is spared).
    public var onlyAmong: Set<UInt64>?

    public init(
        afterMilliseconds: UInt32, observedWaits: [UInt64: UInt32] = [:], firedTimerIsEvidence: Bool = false,
        onlyAmong: Set<UInt64>? = nil
    ) {
        self.afterMilliseconds = afterMilliseconds
        self.observedWaits = observedWaits
        self.firedTimerIsEvidence = firedTimerIsEvidence
        self.onlyAmong = onlyAmong
    }

    /// idiag_timer of a socket whose peer's window is shut (ICSK_TIME_PROBE0).
    public static let zeroWindowProbeTimer: UInt8 = 4
    /// idiag_timer of a socket retransmitting (ICSK_TIME_RETRANS, or a loss probe).
    public static let retransmitTimer: UInt8 = 1

    /// Data waits unanswered: queued or in flight, and not a shut window whose peer answers its probes.
    public static func isWaiting(_ socket: DiagnosedSocket) -> Bool {
        guard socket.transport == .tcp, socket.state == .established, let info = socket.tcpInfo else { return false }
        // A drop beyond the host leaves segments in flight (unacked); a local drop leaves them
        // queued and never sent (Send-Q). Both are data waiting.
        guard info.unacked > 0 || socket.sendQueue > 0 else { return false }
        // A closed window: the peer is slow to read, not gone, while it acknowledges every window
        // probe (the kernel zeroes the unanswered-probe count on each ACK). Its last ACK can be as
        // old as the probe interval, which backs off to two minutes, however long the window stays shut.
        return !(socket.timer == Self.zeroWindowProbeTimer && info.unacked == 0 && info.probes == 0)
    }

    public func isSuspicious(_ socket: DiagnosedSocket) -> Bool {
        guard Self.isWaiting(socket), let info = socket.tcpInfo else { return false }
        return info.lastAckReceivedMilliseconds >= afterMilliseconds
    }

    /// How long one look shows the data has waited at least. Only a segment in flight tells: its
    /// retransmissions came at RTO, 2 RTO, 4 RTO... after it was first sent (`tcpi_rto` doubles with
    /// each, `tcpi_backoff` counts them), and `tcpi_last_data_sent` is the time since the last send.
    /// Data queued and never sent (a local drop) or a window probe shows no such clock: 0.
    public static func kernelShowsWaited(_ socket: DiagnosedSocket) -> UInt32 {
        guard let info = socket.tcpInfo, info.unacked > 0, socket.timer == retransmitTimer else { return 0 }
        let backoff = UInt64(min(info.backoff, 16))
        let firstTimeout = UInt64(info.rtoMicroseconds / 1000) >> backoff
        let retransmitting = backoff > 0 ? firstTimeout * ((1 << backoff) - 1) : 0
        return UInt32(min(retransmitting + UInt64(info.lastDataSentMilliseconds), UInt64(UInt32.max)))
    }

    /// How long the data has waited at least, by the kernel's look and the caller's earlier ones.
    public func waited(_ socket: DiagnosedSocket) -> UInt32 {
        max(Self.kernelShowsWaited(socket), observedWaits[socket.id.cookie] ?? 0)
    }

    public func condemns(_ socket: DiagnosedSocket) -> Bool {
        guard isSuspicious(socket), let info = socket.tcpInfo, onlyAmong?.contains(socket.id.cookie) ?? true else { return false }
        if firedTimerIsEvidence, info.backoff > 0 || info.retransmits > 0 { return true }
        return waited(socket) >= afterMilliseconds
    }

    /// The figures that condemned a socket, for its audit line.
    public static func evidence(_ socket: DiagnosedSocket) -> String {
        guard let info = socket.tcpInfo else { return "no tcp_info" }
        return "unacked=\(info.unacked) send_q=\(socket.sendQueue) last_ack_ms=\(info.lastAckReceivedMilliseconds) "
            + "last_send_ms=\(info.lastDataSentMilliseconds) retransmits=\(info.retransmits) backoff=\(info.backoff) "
            + "rto_ms=\(info.rtoMicroseconds / 1000) timer=\(socket.timer)"
    }
}
