import Netlink
import Reaper
import SockDiag

/// The JSON shape of `purge -o json` and `list -o json`.
struct ReportDocument: Encodable {
    struct Socket: Encodable {
        var proto: String
        var family: String
        var state: String
        var local: String
        var remote: String
        var cookie: String
        var recv_q: UInt32
        var send_q: UInt32
        var timer: UInt8
        var retrans: UInt8
        var tcp_info: TCPInfoDocument?
        var result: String
        var error: String?
        /// Found through a conntrack entry (a NAT'd flow), not by its own remote address.
        var through_conntrack: Bool
        var netns: String?

        // Absent values print as null rather than vanishing: consumers can rely on every key.
        enum CodingKeys: String, CodingKey {
            case proto, family, state, local, remote, cookie, recv_q, send_q, timer, retrans, tcp_info, result, error
            case through_conntrack, netns
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(proto, forKey: .proto)
            try container.encode(family, forKey: .family)
            try container.encode(state, forKey: .state)
            try container.encode(local, forKey: .local)
            try container.encode(remote, forKey: .remote)
            try container.encode(cookie, forKey: .cookie)
            try container.encode(recv_q, forKey: .recv_q)
            try container.encode(send_q, forKey: .send_q)
            try container.encode(timer, forKey: .timer)
            try container.encode(retrans, forKey: .retrans)
            try container.encode(tcp_info, forKey: .tcp_info)
            try container.encode(result, forKey: .result)
            try container.encode(error, forKey: .error)
            try container.encode(through_conntrack, forKey: .through_conntrack)
            try container.encode(netns, forKey: .netns)
        }
    }

    struct TCPInfoDocument: Encodable {
        var unacked: UInt32
        var retransmits: UInt8
        var backoff: UInt8
        var last_ack_recv_ms: UInt32
        var last_data_sent_ms: UInt32
        var rtt_us: UInt32
        var total_retrans: UInt32
    }

    struct Tuple: Encodable {
        var src: String
        var dst: String
    }

    struct ConntrackEntryDocument: Encodable {
        var proto: String
        var family: String
        var original: Tuple
        var reply: Tuple
        var zone: UInt16
        var id: UInt32?
        var mark: UInt32
        var timeout: UInt32?
        var matched: String
        var result: String
        var error: String?
        var netns: String?

        enum CodingKeys: String, CodingKey {
            case proto, family, original, reply, zone, id, mark, timeout, matched, result, error, netns
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(proto, forKey: .proto)
            try container.encode(family, forKey: .family)
            try container.encode(original, forKey: .original)
            try container.encode(reply, forKey: .reply)
            try container.encode(zone, forKey: .zone)
            try container.encode(id, forKey: .id)
            try container.encode(mark, forKey: .mark)
            try container.encode(timeout, forKey: .timeout)
            try container.encode(matched, forKey: .matched)
            try container.encode(result, forKey: .result)
            try container.encode(error, forKey: .error)
            try container.encode(netns, forKey: .netns)
        }
    }

    struct Counts: Encodable {
        var sockets_matched: Int
        var sockets_destroyed: Int
        var conntrack_matched: Int
        var conntrack_deleted: Int
        var errors: Int
    }

    var command: String
    var dry_run: Bool
    var destinations: [String]
    var sockets: [Socket]
    var conntrack: [ConntrackEntryDocument]
    var counts: Counts
    var errors: [String]
    var extra_rounds: Int
    var duration_ms: Double

    init(report: PurgeReport, command: String, dryRun: Bool, destinations: [String], errors: [SystemCallError]) {
        self.command = command
        self.dry_run = dryRun
        self.destinations = destinations
        sockets = report.sockets.map { result in
            let socket = result.socket
            return Socket(
                proto: socket.transport.description, family: socket.family == .inet ? "inet" : "inet6",
                state: socket.state.filterName, local: socket.local.description, remote: socket.remote.description,
                cookie: String(socket.id.cookie), recv_q: socket.receiveQueue, send_q: socket.sendQueue,
                timer: socket.timer, retrans: socket.retransmitsOnTimer,
                tcp_info: socket.tcpInfo.map {
                    TCPInfoDocument(
                        unacked: $0.unacked, retransmits: $0.retransmits, backoff: $0.backoff,
                        last_ack_recv_ms: $0.lastAckReceivedMilliseconds, last_data_sent_ms: $0.lastDataSentMilliseconds,
                        rtt_us: $0.rttMicroseconds, total_retrans: $0.totalRetransmits)
                },
                result: Self.name(result.outcome), error: result.outcome.error?.description,
                through_conntrack: result.throughConntrack, netns: result.namespace)
        }
        conntrack = report.conntrack.map { result in
            let entry = result.entry
            return ConntrackEntryDocument(
                proto: entry.transport.description, family: entry.family == .v4 ? "ipv4" : "ipv6",
                original: Tuple(src: entry.original.source.description, dst: entry.original.destination.description),
                reply: Tuple(src: entry.reply.source.description, dst: entry.reply.destination.description),
                zone: entry.zone, id: entry.id, mark: entry.mark, timeout: entry.timeoutSeconds,
                matched: result.matchedBy.rawValue, result: Self.name(result.outcome, ended: "deleted"),
                error: result.outcome.error?.description, netns: result.namespace)
        }
        counts = Counts(
            sockets_matched: report.sockets.count, sockets_destroyed: report.socketsEnded,
            conntrack_matched: report.conntrack.count, conntrack_deleted: report.conntrackDeleted,
            errors: errors.count)
        self.errors = errors.map { error in error.hint.map { "\(error.description): \($0)" } ?? error.description }
        extra_rounds = report.extraRounds
        duration_ms = (report.durationSeconds * 1_000_000).rounded() / 1000
    }

    static func name(_ outcome: PurgeReport.Outcome, ended: String = "destroyed") -> String {
        switch outcome {
        case .ended: ended
        case .wouldEnd: "would-" + ended.dropLast(ended == "destroyed" ? 2 : 1)
        case .listed: "listed"
        case .unconfirmed: "unconfirmed"
        case .alreadyGone: "already-gone"
        case .failed: "error"
        }
    }
}
