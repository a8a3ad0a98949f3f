import ArgumentParser
import Conntrack
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
    let destinations: [Destination]

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
            + "\(report.conntrack.count { counted($0.outcome) } + report.conntrackFlushedUnlisted) conntrack entries, \(errors.count) errors, "
            + String(format: "%.1f ms", report.durationSeconds * 1000)
        if report.allErrors.contains(where: \.meansConntrackAbsent) { summary += " (conntrack not available here: skipped)" }
        if report.conntrackFlushes > 0 {
            let flushes = report.conntrackFlushes == 1 ? "1 filtered flush" : "\(report.conntrackFlushes) filtered flushes"
            summary +=
                report.conntrackFlushedUnlisted > 0
                ? " (conntrack: \(flushes) in the kernel; \(report.conntrackFlushedUnlisted) entries of direct flows deleted unlisted, "
                    + "counted by the table's size before and after)"
                : " (conntrack: \(flushes) in the kernel; entries counted from the dump before them)"
        }
        if report.conntrackInOtherZones > 0 {
            summary += " (\(report.conntrackInOtherZones) conntrack entries listed toward them in other zones, left: --zone takes them)"
        }
        standardError(summary)
        let hints = Set(errors.map { error in error.hint.map { "\(error.call): \($0)" } ?? error.description })
        for hint in hints.sorted() { standardError("error: \(hint)") }
        if !errors.isEmpty { throw ExitCode.failure }
    }

    /// Tables of this many rows or more are rendered side by side, the conntrack one on a thread of
    /// its own: 20,000 rows take 10-15 ms each, while the other core has nothing left to do.
    static let sideBySideRows = 2_000

    private func printTables(_ report: PurgeReport) {
        let listing = mode == .list
        // With --netns every row says which namespace it is in.
        let labelled = report.sockets.contains { $0.namespace != nil } || report.conntrack.contains { $0.namespace != nil }
        let entries: BackgroundWork<[UInt8]>? =
            min(report.sockets.count, report.conntrack.count) >= Self.sideBySideRows
            ? BackgroundWork { Self.conntrackTable(report.conntrack, listing: listing, labelled: labelled) } : nil
        var output = report.sockets.isEmpty ? [] : Self.socketTable(report.sockets, listing: listing, labelled: labelled)
        if !report.conntrack.isEmpty {
            if !report.sockets.isEmpty { output.append(UInt8(ascii: "\n")) }
            // A thread that could not start leaves the work here.
            output += (try? entries?.wait()) ?? Self.conntrackTable(report.conntrack, listing: listing, labelled: labelled)
        }
        guard !output.isEmpty else { return }
        FileHandle.standardOutput.write(Data(output))
    }

    private static func socketTable(_ sockets: [PurgeReport.SocketResult], listing: Bool, labelled: Bool) -> [UInt8] {
        var table = TextTable(
            header: (labelled ? ["Netns"] : []) + [
                "Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", listing ? "Info" : "Result",
            ])
        for result in sockets {
            let socket = result.socket
            if labelled { table.add(result.namespace ?? "-") }
            table.add(socket.transport.description)
            table.add(socket.state.description)
            table.add(socket.receiveQueue)
            table.add(socket.sendQueue)
            table.add(socket.local)
            table.add(socket.remote)
            table.add((listing ? info(socket) : describe(result.outcome)) + (result.throughConntrack ? " (via conntrack)" : ""))
        }
        var output: [UInt8] = []
        table.render(into: &output)
        return output
    }

    private static func conntrackTable(_ entries: [PurgeReport.ConntrackResult], listing: Bool, labelled: Bool) -> [UInt8] {
        var table = TextTable(
            header: (labelled ? ["Netns"] : []) + ["Proto", "Original", "Reply", "Zone", "Matched", listing ? "Timeout" : "Result"])
        func add(_ tuple: ConntrackEntry.Tuple) {
            table.add { bytes in
                tuple.source.appendText(to: &bytes)
                bytes.append(contentsOf: " -> ".utf8)
                tuple.destination.appendText(to: &bytes)
            }
        }
        for result in entries {
            let entry = result.entry
            if labelled { table.add(result.namespace ?? "-") }
            table.add(entry.transport.description)
            add(entry.original)
            add(entry.reply)
            table.add(entry.zone)
            table.add(result.matchedBy.rawValue)
            table.add(
                listing
                    ? (entry.timeoutSeconds.map { "\($0)s" } ?? "-")
                    : describe(result.outcome) + (result.byFlush ? " (filtered flush)" : ""))
        }
        var output: [UInt8] = []
        table.render(into: &output)
        return output
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
