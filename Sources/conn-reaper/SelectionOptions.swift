import ArgumentParser
import Conntrack
import Durations
import NetworkAddress
import OS
import Reaper
import SockDiag

/// The filters `purge` and `list` share: which destinations, transports and states.
struct SelectionOptions: ParsableArguments {
    @Argument(
        help: ArgumentHelp(
            "Destinations: IP, IP:PORT, CIDR, CIDR:PORT, [IPv6]:PORT, or :PORT.", valueName: "dest"),
        transform: Destination.transform)
    var destinations: [Destination]

    @Option(name: .customLong("proto"), help: "Transport to match: tcp, udp or all.")
    var transport: TransportChoice = .tcp

    @Option(
        name: .customLong("state"),
        help: ArgumentHelp(
            // A transform's default is not shown by ArgumentParser: the help names it.
            "Comma-separated TCP states (ss names; default: \(SocketStates.reapByDefault)). LISTEN is never reaped.", valueName: "states"),
        transform: SocketStates.transform)
    var states: SocketStates = .reapByDefault

    @Flag(name: .customLong("no-conntrack"), help: "Leave conntrack entries alone.")
    var noConntrack = false

    @Flag(name: .customLong("no-sockets"), help: "Leave sockets alone; conntrack only.")
    var noSockets = false

    @Option(
        help: ArgumentHelp(
            "Only connections stuck this long: data unacknowledged and no ACK for DURATION, with retransmits as evidence (e.g. 3s).",
            valueName: "duration"),
        transform: PositiveDuration.transform)
    var stuck: PositiveDuration?

    @Option(
        name: .customLong("netns"),
        help: ArgumentHelp(
            "Work in this network namespace instead of the current one: a NAME under /run/netns (as `ip -n` takes), "
                + "a file like /proc/PID/ns/net, or 'all' for every namespace on the node (repeatable; needs CAP_SYS_ADMIN).",
            valueName: "name|path"),
        transform: NamespacedPurge.Selection.transform)
    var netns: [NamespacedPurge.Selection] = []

    @Option(
        name: .customLong("zone"),
        help: ArgumentHelp(
            "Conntrack zones whose entries are taken (repeatable, or 'all'); entries toward the destinations "
                + "in other zones are left and counted. Default: zone 0.",
            valueName: "zone|all"),
        transform: ZoneArgument.transform)
    var zones: [ZoneArgument] = []

    @Flag(
        name: .customLong("inbound"),
        help: "Also take connections a port-less destination opened to this host (accepted on a listening port); left by default.")
    var inbound = false

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    enum TransportChoice: String, ExpressibleByArgument, CaseIterable {
        case tcp, udp, all
        var set: Set<TransportProtocol> { self == .all ? [.tcp, .udp] : [self == .tcp ? .tcp : .udp] }
    }

    func validate() throws {
        guard !destinations.isEmpty else { throw ValidationError("name at least one destination") }
        if stuck != nil, transport == .udp { throw ValidationError("--stuck judges TCP connections: it cannot go with --proto udp") }
        if noConntrack && noSockets { throw ValidationError("--no-sockets with --no-conntrack leaves nothing to do") }
        if zones.contains(.all), zones.count > 1 { throw ValidationError("--zone all takes every zone: give it alone") }
    }

    /// The purger's options for this selection: a port-less destination spares what it opened to this host.
    func options(dryRun: Bool = false) -> Purger.Options {
        var options = Purger.Options(sockets: !noSockets, conntrack: !noConntrack, dryRun: dryRun)
        options.sparingInbound = !inbound && destinations.contains { $0.port == nil }
        return options
    }

    /// The zones `--zone` selects; `validate()` has refused `all` beside others.
    var zoneSelection: ConntrackZones {
        if zones.isEmpty { return .standard }
        if zones.contains(.all) { return .all }
        return .only(Set(zones.compactMap { if case .zone(let zone) = $0 { zone } else { nil } }))
    }

    /// `--stuck` as the rule the matcher applies; `validate()` has refused it with `--proto udp`.
    var stuckRule: StuckRule? {
        stuck.map { StuckRule(afterMilliseconds: UInt32(min($0.duration.seconds * 1000, Double(UInt32.max))), firedTimerIsEvidence: true) }
    }

    /// Runs `act` with a purger of the current namespace, or of each `--netns` namespace in turn.
    func report(_ act: @escaping @Sendable (Purger) -> PurgeReport) -> PurgeReport {
        guard !netns.isEmpty else { return act(Purger(sockets: !noSockets, conntrack: !noConntrack)) }
        return NamespacedPurge.run(in: NamespacedPurge.resolve(netns), sockets: !noSockets, conntrack: !noConntrack, act)
    }

    func matcher() -> DestinationMatcher {
        DestinationMatcher(destinations: destinations, transports: transport.set, states: states, stuck: stuckRule, zones: zoneSelection)
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}
