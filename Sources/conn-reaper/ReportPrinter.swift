import ArgumentParser
import Foundation
import Reaper
import NetworkAddress
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
        func netns(_ namespace: String?, in table: inout TextTable) { if labelled { table.add(namespace ?? "-") } }
        var output: [UInt8] = []
        if !report.sockets.isEmpty {
            var table = TextTable(
                header: (labelled ? ["Netns"] : []) + [
                    "Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", listing ? "Info" : "Result",
                ])
            for result in report.sockets {
                let socket = result.socket
                netns(result.namespace, in: &table)
                table.add(socket.transport.description)
                table.add(socket.state.description)
                table.add(socket.receiveQueue)
                table.add(socket.sendQueue)
                table.add(socket.local)
                table.add(socket.remote)
                table.add(
                    (listing ? Self.info(socket) : Self.describe(result.outcome)) + (result.throughConntrack ? " (via conntrack)" : ""))
            }
            table.render(into: &output)
        }
        if !report.conntrack.isEmpty {
            if !report.sockets.isEmpty { output.append(UInt8(ascii: "\n")) }
            var table = TextTable(
                header: (labelled ? ["Netns"] : []) + ["Proto", "Original", "Reply", "Zone", "Matched", listing ? "Timeout" : "Result"])
            for result in report.conntrack {
                let entry = result.entry
                netns(result.namespace, in: &table)
                table.add(entry.transport.description)
                for tuple in [entry.original, entry.reply] {
                    table.add { bytes in
                        tuple.source.appendText(to: &bytes)
                        bytes.append(contentsOf: " -> ".utf8)
                        tuple.destination.appendText(to: &bytes)
                    }
                }
                table.add(entry.zone)
                table.add(result.matchedBy.rawValue)
                table.add(
                    listing
                        ? (entry.timeoutSeconds.map { "\($0)s" } ?? "-")
                        : Self.describe(result.outcome) + (result.byFlush ? " (filtered flush)" : ""))
            }
            table.render(into: &output)
        }
        guard !output.isEmpty else { return }
        FileHandle.standardOutput.write(Data(output))
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

    private func printJSON(_ report: PurgeReport, dryRun: Bool, errors: [SystemCallError]) {
        print(ReportDocument.json(report: report, command: mode.rawValue, dryRun: dryRun, destinations: destinations, errors: errors).text)
    }
}

func standardError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
