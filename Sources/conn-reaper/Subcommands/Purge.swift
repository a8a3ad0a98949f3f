import ArgumentParser
import Reaper

struct Purge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Destroy matching sockets in this network namespace, then delete matching conntrack entries.",
        discussion: "Exit 0 also when nothing matched; 1 when the kernel refused (the message says why); 64 on bad arguments.")

    @OptionGroup var selection: SelectionOptions

    @Flag(name: .customLong("dry-run"), help: "Show what would be ended; change nothing.")
    var dryRun = false

    func run() throws {
        let options = Purger.Options(sockets: !selection.noSockets, conntrack: !selection.noConntrack, dryRun: dryRun)
        let matcher = try selection.matcher()
        let report = selection.report { $0.purge(matcher, options: options) }
        try ReportPrinter(mode: .purge, format: selection.output, destinations: selection.destinations)
            .emit(report, dryRun: dryRun)
    }
}
