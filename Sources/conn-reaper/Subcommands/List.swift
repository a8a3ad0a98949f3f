import ArgumentParser
import Reaper

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show matching sockets (with tcp_info) and conntrack entries; change nothing.")

    @OptionGroup var selection: SelectionOptions

    func run() throws {
        let options = selection.options()
        let matcher = selection.matcher()
        let report = selection.report { $0.list(matcher, options: options) }
        try ReportPrinter(mode: .list, format: selection.output, destinations: selection.destinations)
            .emit(report, dryRun: false)
    }
}
