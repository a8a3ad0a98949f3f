import ArgumentParser
import NetworkAddress
import Reaper

struct Purge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Destroy matching sockets in this network namespace, then delete matching conntrack entries.",
        discussion: "Exit 0 also when nothing matched; 1 when the kernel refused (the message says why); 64 on bad arguments.")

    @OptionGroup var selection: SelectionOptions

    @Flag(name: .customLong("dry-run"), help: "Show what would be ended; change nothing.")
    var dryRun = false

    @Flag(help: "Purge toward a destination wider than a /8 (IPv4) or a /32 (IPv6), or a bare :PORT.")
    var force = false

    @Option(
        name: .customLong("conntrack-flush"),
        help: ArgumentHelp(
            "Delete conntrack entries toward IPv4 hosts with the kernel's filtered flush (Linux 6.12+): auto (from 256 entries, or from 256 sockets ended toward a host: then its direct flows' entries are counted, not listed), never (every entry listed and deleted exactly), always.",
            valueName: "when"))
    var conntrackFlush: Purger.ConntrackFlushMode = .auto

    func validate() throws {
        guard !force, !dryRun else { return }
        if let wide = selection.destinations.first(where: \.isWide) {
            throw ValidationError(
                "destination '\(wide)' is wider than a /\(Destination.widestIPv4) (IPv4) or /\(Destination.widestIPv6) (IPv6): "
                    + "it would end most of this host's connections; add --force if that is meant (or --dry-run to look first)")
        }
    }

    func run() throws {
        var chosen = selection.options(dryRun: dryRun)
        chosen.conntrackFlush = conntrackFlush
        chosen.conntrackDumpsSideBySide = selection.netns.isEmpty
        let options = chosen
        let matcher = selection.matcher()
        let report = selection.report { $0.purge(matcher, options: options) }
        try ReportPrinter(mode: .purge, format: selection.output, destinations: selection.destinations)
            .emit(report, dryRun: dryRun)
    }
}

extension Purger.ConntrackFlushMode: ExpressibleByArgument {}
