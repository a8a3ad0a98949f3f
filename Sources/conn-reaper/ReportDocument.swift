import NetworkAddress
import Reaper
import SockDiag
import OS
import Conntrack

/// The JSON of `purge -o json` and `list -o json`. Every key is always present; absent values are null.
enum ReportDocument {
    static func json(
        report: PurgeReport, command: String, dryRun: Bool, destinations: [Destination], errors: [SystemCallError]
    ) -> JSONValue {
        .object([
            ("command", .string(command)),
            ("dry_run", .bool(dryRun)),
            ("destinations", .array(destinations.map { .string($0.description) })),
            ("sockets", .array(report.sockets.map(socket))),
            ("conntrack", .array(report.conntrack.map(conntrackEntry))),
            (
                "counts",
                .object([
                    ("sockets_matched", .integer(Int64(report.sockets.count))),
                    ("sockets_destroyed", .integer(Int64(report.socketsEnded))),
                    ("conntrack_matched", .integer(Int64(report.conntrack.count))),
                    ("conntrack_deleted", .integer(Int64(report.conntrackDeleted))),
                    ("conntrack_flushes", .integer(Int64(report.conntrackFlushes))),
                    ("conntrack_flushed_unlisted", .integer(Int64(report.conntrackFlushedUnlisted))),
                    ("conntrack_in_other_zones", .integer(Int64(report.conntrackInOtherZones))),
                    ("errors", .integer(Int64(errors.count))),
                ])
            ),
            (
                "errors",
                .array(
                    errors.map { error in
                        .string(error.hint.map { "\(error.description): \($0)" } ?? error.description)
                    })
            ),
            ("extra_rounds", .integer(Int64(report.extraRounds))),
            ("duration_ms", .number((report.durationSeconds * 1_000_000).rounded() / 1000)),
        ])
    }

    // Row objects list their keys in byte order, as they are printed: the writer then need not sort.

    static func socket(_ result: PurgeReport.SocketResult) -> JSONValue {
        let socket = result.socket
        return .object([
            ("cookie", .string(String(socket.id.cookie))),
            ("error", .optional(result.outcome.error?.description)),
            ("family", .string(socket.family == .inet ? "inet" : "inet6")),
            ("local", .string(socket.local.description)),
            ("netns", .optional(result.namespace)),
            ("proto", .string(socket.transport.description)),
            ("recv_q", .unsigned(UInt64(socket.receiveQueue))),
            ("remote", .string(socket.remote.description)),
            ("result", .string(name(result.outcome))),
            ("retrans", .unsigned(UInt64(socket.retransmitsOnTimer))),
            ("send_q", .unsigned(UInt64(socket.sendQueue))),
            ("state", .string(socket.state.filterName)),
            (
                "tcp_info",
                socket.tcpInfo.map { info in
                    .object([
                        ("backoff", .unsigned(UInt64(info.backoff))),
                        ("last_ack_recv_ms", .unsigned(UInt64(info.lastAckReceivedMilliseconds))),
                        ("last_data_sent_ms", .unsigned(UInt64(info.lastDataSentMilliseconds))),
                        ("retransmits", .unsigned(UInt64(info.retransmits))),
                        ("rtt_us", .unsigned(UInt64(info.rttMicroseconds))),
                        ("total_retrans", .unsigned(UInt64(info.totalRetransmits))),
                        ("unacked", .unsigned(UInt64(info.unacked))),
                    ])
                } ?? .null
            ),
            // Found through a conntrack entry (a NAT'd flow), not by its own remote address.
            ("through_conntrack", .bool(result.throughConntrack)),
            ("timer", .unsigned(UInt64(socket.timer))),
        ])
    }

    static func conntrackEntry(_ result: PurgeReport.ConntrackResult) -> JSONValue {
        let entry = result.entry
        func tuple(_ tuple: ConntrackEntry.Tuple) -> JSONValue {
            .object([("dst", .string(tuple.destination.description)), ("src", .string(tuple.source.description))])
        }
        return .object([
            // "flush": deleted by a filtered flush (which names no entry): listed from the dump before it.
            ("deleted_by", .optional(result.outcome == .ended ? (result.byFlush ? "flush" : "exact") : nil)),
            ("error", .optional(result.outcome.error?.description)),
            ("family", .string(entry.family == .v4 ? "ipv4" : "ipv6")),
            ("id", .optional(entry.id)),
            ("mark", .unsigned(UInt64(entry.mark))),
            ("matched", .string(result.matchedBy.rawValue)),
            ("netns", .optional(result.namespace)),
            ("original", tuple(entry.original)),
            ("proto", .string(entry.transport.description)),
            ("reply", tuple(entry.reply)),
            ("result", .string(name(result.outcome, ended: "deleted"))),
            ("timeout", .optional(entry.timeoutSeconds)),
            ("zone", .unsigned(UInt64(entry.zone))),
        ])
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
