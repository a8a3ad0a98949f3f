import ArgumentParser
import Reaper

struct Purge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Destroy matching sockets in this network namespace, then delete matching conntrack entries.",
        discussion: "Exit 0 also when nothing matched; 1 when the kernel refused (the message says why); 64 on bad arguments.")

    @OptionGroup var selection: SelectionOptions

    @Flag(name: .customLong("dry-run"), help: "Show what would be ended; change nothing.")
    var dryRun = false

    @Option(
        name: .customLong("conntrack-flush"),
        help: ArgumentHelp(
            "Delete conntrack entries toward IPv4 hosts with the kernel's filtered flush (Linux 6.12+): auto (from 256 entries, or from 256 sockets ended toward a host: then its direct flows' entries are counted, not listed), never (every entry listed and deleted exactly), always.",
            valueName: "when"))
    var conntrackFlush: Purger.ConntrackFlushMode = .auto

    func run() throws {
        let options = {
            var options = Purger.Options(sockets: !selection.noSockets, conntrack: !selection.noConntrack, dryRun: dryRun)
            options.conntrackFlush = conntrackFlush
            options.conntrackDumpsSideBySide = selection.netns.isEmpty
            return options
        }()
        let matcher = try selection.matcher()
        let report = selection.report { $0.purge(matcher, options: options) }
        try ReportPrinter(mode: .purge, format: selection.output, destinations: selection.destinations)
            .emit(report, dryRun: dryRun)
    }
}

extension Purger.ConntrackFlushMode: ExpressibleByArgument {}
