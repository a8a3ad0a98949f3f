import ArgumentParser
import Reaper

@main
struct ConnReaper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conn-reaper",
        abstract: "Ends connections to dead backends: sock_diag SOCK_DESTROY for sockets, ctnetlink for conntrack.",
        version: ConnReaperVersion.description,
        subcommands: [Run.self, Purge.self, List.self, Check.self, Upstreams.self]
    )
}
