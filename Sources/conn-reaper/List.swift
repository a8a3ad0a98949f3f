import ArgumentParser
import Reaper

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show matching sockets (with tcp_info) and conntrack entries; change nothing.")

    @OptionGroup var selection: SelectionOptions

    func run() throws {
        let purger = Purger(sockets: !selection.noSockets, conntrack: !selection.noConntrack)
        let options = Purger.Options(sockets: !selection.noSockets, conntrack: !selection.noConntrack)
        let report = purger.list(try selection.matcher(), options: options)
        try ReportPrinter(command: "list", format: selection.output, destinations: selection.destinations)
            .emit(report, dryRun: false)
    }
}
