import ArgumentParser
import Foundation
import Reaper
import SockDiag
import OS

/// Renders a PurgeReport: an ss-like table or one JSON object on stdout, a one-line summary on stderr,
/// and the exit status (1 when the kernel refused anything, with a hint naming the fix).
struct ReportPrinter {
    /// Which subcommand's report this is: it names the verb and what the last column shows.
    enum Mode: String {
        case list, purge
    }

    let mode: Mode
    let format: OutputFormat
    let destinations: [String]

    func emit(_ report: PurgeReport, dryRun: Bool) throws {
        let errors = report.allErrors.filter { !$0.meansConntrackAbsent }
        switch format {
        case .text: printTables(report)
        case .json: printJSON(report, dryRun: dryRun, errors: errors)
        }
        let verb = mode == .list ? "listed" : (dryRun ? "would end" : "ended")
        let counted: (PurgeReport.Outcome) -> Bool = { $0 != .unconfirmed && $0 != .alreadyGone && $0.error == nil }
        var summary =
            "conn-reaper \(mode.rawValue): \(verb) \(report.sockets.count { counted($0.outcome) }) sockets, "
            + "\(report.conntrack.count { counted($0.outcome) }) conntrack entries, \(errors.count) errors, "
            + String(format: "%.1f ms", report.durationSeconds * 1000)
        if report.allErrors.contains(where: \.meansConntrackAbsent) { summary += " (conntrack not available here: skipped)" }
        if report.conntrackFlushes > 0 {
            summary += " (conntrack: \(report.conntrackFlushes) filtered flushes in the kernel; entries counted from the dump before them)"
        }
        standardError(summary)
        let hints = Set(errors.map { error in error.hint.map { "\(error.call): \($0)" } ?? error.description })
        for hint in hints.sorted() { standardError("error: \(hint)") }
        if !errors.isEmpty { throw ExitCode.failure }
    }

    private func printTables(_ report: PurgeReport) {
        let listing = mode == .list
        // With --netns every row says which namespace it is in.
        let labelled = report.sockets.contains { $0.namespace != nil } || report.conntrack.contains { $0.namespace != nil }
        func netns(_ namespace: String?) -> [String] { labelled ? [namespace ?? "-"] : [] }
        if !report.sockets.isEmpty {
            var rows = [
                netns("Netns") + [
                    "Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", listing ? "Info" : "Result",
                ]
            ]
            for result in report.sockets {
                let socket = result.socket
                rows.append(
                    netns(result.namespace) + [
                        socket.transport.description, socket.state.description, String(socket.receiveQueue),
                        String(socket.sendQueue), socket.local.description, socket.remote.description,
                        (listing ? Self.info(socket) : Self.describe(result.outcome)) + (result.throughConntrack ? " (via conntrack)" : ""),
                    ])
            }
            print(Self.table(rows))
        }
        if !report.conntrack.isEmpty {
            if !report.sockets.isEmpty { print("") }
            var rows = [netns("Netns") + ["Proto", "Original", "Reply", "Zone", "Matched", listing ? "Timeout" : "Result"]]
            for result in report.conntrack {
                let entry = result.entry
                rows.append(
                    netns(result.namespace) + [
                        entry.transport.description,
                        "\(entry.original.source) -> \(entry.original.destination)",
                        "\(entry.reply.source) -> \(entry.reply.destination)",
                        String(entry.zone), result.matchedBy.rawValue,
                        listing
                            ? (entry.timeoutSeconds.map { "\($0)s" } ?? "-")
                            : Self.describe(result.outcome) + (result.byFlush ? " (filtered flush)" : ""),
                    ])
            }
            print(Self.table(rows))
        }
    }

    static func describe(_ outcome: PurgeReport.Outcome) -> String {
        switch outcome {
        case .ended: "ended"
        case .wouldEnd: "would-end"
        case .listed: "listed"
        case .unconfirmed: "unconfirmed"
        case .alreadyGone: "already-gone"
        case .failed(let error): "error: \(error.errno)"
        }
    }

    static func info(_ socket: DiagnosedSocket) -> String {
        var parts: [String] = []
        if socket.timer != 0 { parts.append("timer:\(["", "on", "keepalive", "", "persist"][Int(min(socket.timer, 4))])") }
        if let info = socket.tcpInfo {
            parts.append("unacked:\(info.unacked)")
            if info.retransmits > 0 { parts.append("retrans:\(info.retransmits)") }
            if info.backoff > 0 { parts.append("backoff:\(info.backoff)") }
            parts.append("lastack:\(info.lastAckReceivedMilliseconds)ms")
            parts.append(String(format: "rtt:%.3fms", Double(info.rttMicroseconds) / 1000))
        }
        return parts.isEmpty ? "-" : parts.joined(separator: " ")
    }

    /// Columns padded by UTF-8 width (every cell is ASCII), built in one string: Foundation's
    /// `padding(toLength:)` took a third of a 20,000-row purge.
    static func table(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { column in rows.map { $0[column].utf8.count }.max() ?? 0 }
        var output = ""
        output.reserveCapacity(rows.count * (widths.reduce(0, +) + 2 * widths.count + 1))
        for (rowIndex, row) in rows.enumerated() {
            if rowIndex > 0 { output += "\n" }
            for (index, cell) in row.enumerated() {
                output += cell
                guard index < row.count - 1 else { continue }
                output += String(repeating: " ", count: widths[index] - cell.utf8.count + 2)
            }
        }
        return output
    }

    private func printJSON(_ report: PurgeReport, dryRun: Bool, errors: [SystemCallError]) {
        print(ReportDocument.json(report: report, command: mode.rawValue, dryRun: dryRun, destinations: destinations, errors: errors).text)
    }
}

func standardError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
