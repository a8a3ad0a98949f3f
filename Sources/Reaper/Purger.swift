import Conntrack
import Durations
import Netlink
import NetworkAddress
import SockDiag
import OS

/// Acts on what a `DestinationMatcher` decides: destroys sockets first, then deletes conntrack
/// entries, so the RST the kernel sends for each socket is still reverse-NATed on its way out.
public final class Purger {
    public struct Options: Sendable {
        public var sockets = true
        public var conntrack = true
        public var dryRun = false
        /// Extra dump-and-destroy rounds when acks were lost or a dump was inconsistent.
        public var maximumExtraRounds = 3
        /// At most this many sockets are destroyed; the rest are left for a later purge (a rate cap).
        public var socketLimit: Int?
        /// Leave this process's own sockets alone: the agent's probes connect to the very backends it
        /// reaps, and a probe aborted mid-connect would count a recovering backend as still down.
        public var sparingOwnSockets = false
        /// Look at conntrack only once some socket matched: a pass that keeps a dead backend reaped
        /// mostly finds nothing, and a dump of a busy node's table costs more than the socket walk.
        /// NAT'd flows, which only conntrack can name, wait for a pass without it.
        public var conntrackOnlyAfterSockets = false
        /// When entries toward a dead destination are deleted by the kernel's filtered flush.
        public var conntrackFlush: ConntrackFlushMode = .auto
        /// Both directions' conntrack dumps at once (see `ConntrackTable.entries`): for a purge in one namespace.
        public var conntrackDumpsSideBySide = false
        /// Leave connections a destination opened to this host (accepted on a listening port): a
        /// port-less destination names them by address, though the host serves them.
        public var sparingInbound = false

        public init(sockets: Bool = true, conntrack: Bool = true, dryRun: Bool = false) {
            self.sockets = sockets
            self.conntrack = conntrack
            self.dryRun = dryRun
        }
    }

    /// `auto`: a flush where at least `PurgePlan.flushFrom` entries would go (one walk of the table costs about
    /// what a few hundred exact deletes do) and the kernel takes it. The direct flows toward an IPv4
    /// host are counted by their sockets: from `PurgePlan.flushFrom` ended, their entries are flushed without
    /// a dump listing them first (the kernel built a message per entry, a third of a large purge's
    /// CPU), and counted by the table's size before and after.
    public enum ConntrackFlushMode: String, Sendable, CaseIterable {
        case auto, never, always
    }

    private let socketTable: (any SocketTable)?
    private let flowTable: (any FlowTable)?
    private let openingErrors: [SystemCallError]

    /// Opens the netlink sockets of the calling thread's network namespace for the layers asked for.
    public convenience init(sockets: Bool, conntrack: Bool) {
        var errors: [SystemCallError] = []
        var openedSockets: KernelSocketTable?
        var openedFlows: KernelFlowTable?
        do { openedSockets = sockets ? KernelSocketTable(try SocketDiagnostics()) : nil } catch { errors.append(error) }
        do { openedFlows = conntrack ? KernelFlowTable(try ConntrackTable()) : nil } catch { errors.append(error) }
        self.init(sockets: openedSockets, conntrack: openedFlows, openingErrors: errors)
    }

    /// Acts through these tables; a nil one is a layer not asked for, or one that could not be opened
    /// (`openingErrors` says why: each report carries them as step errors).
    public init(sockets: (any SocketTable)?, conntrack: (any FlowTable)?, openingErrors: [SystemCallError] = []) {
        socketTable = sockets
        flowTable = conntrack
        self.openingErrors = openingErrors
    }

    /// The established TCP sockets toward `backends`, with tcp_info, the agent's own left out (its
    /// heartbeats and kept-alive probes say nothing of the balancer's traffic, and a watch of them
    /// would cost a lookup each): one walk of the table, no report kept. Empty when sock_diag is not
    /// open or the dump fails.
    public func establishedSockets(toward backends: [Endpoint]) -> [DiagnosedSocket] {
        guard let socketTable else { return [] }
        let query = SocketQuery(
            destinations: backends.map { Destination(address: $0.address, port: $0.port) }, transports: [.tcp],
            states: SocketStates([.established]), includeTCPInfo: true)
        guard let sockets = try? socketTable.sockets(matching: query).sockets, !sockets.isEmpty else { return [] }
        let own = socketTable.ownSocketInodes()
        return sockets.filter { !own.contains($0.inode) }
    }

    /// Each socket looked up again by its exact 4-tuple (a hash lookup, no walk); nil where it is gone.
    public func lookUp(_ sockets: [DiagnosedSocket]) -> [DiagnosedSocket?] {
        guard let socketTable else { return sockets.map { _ in nil } }
        return sockets.map { socket in
            (try? socketTable.socket(exactly: socket.id, family: socket.family, transport: socket.transport)) ?? nil
        }
    }

    public func list(_ matcher: DestinationMatcher, includeTCPInfo: Bool = true, options: Options) -> PurgeReport {
        run(matcher, includeTCPInfo: includeTCPInfo, options: options, acting: false)
    }

    public func purge(_ matcher: DestinationMatcher, options: Options) -> PurgeReport {
        run(matcher, includeTCPInfo: false, options: options, acting: !options.dryRun)
    }

    private func run(_ matcher: DestinationMatcher, includeTCPInfo: Bool, options: Options, acting: Bool) -> PurgeReport {
        let started = ContinuousClock.now
        var report = PurgeReport()
        report.stepErrors = openingErrors
        report.socketWalkFailed = options.sockets && socketTable == nil
        let idle: PurgeReport.Outcome = acting ? .ended : (options.dryRun ? .wouldEnd : .listed)
        let plan = PurgePlan(
            matcher: matcher, acting: acting, socketLimit: options.socketLimit, flushMode: options.conntrackFlush,
            sparingOwnSockets: options.sparingOwnSockets, flushSupported: flowTable?.flushSupported)
        // The conntrack dump does not wait for the sockets: only the deletes must come after the
        // destroys. (A stuck scan needs entries only once it condemned a socket: no prefetch.)
        var prefetched: BackgroundWork<ConntrackTable.Dump>?
        // Whether the dumps list the direct flows, or a flush takes them unlisted: known once the
        // sockets are counted, which the reply-source dump waits for (the other side need not).
        let listingDirectFlows = OneShot<Bool>()
        if let known = plan.listsDirectFlowsBeforeCounting { listingDirectFlows.settle(known) }
        // The original-destination side of that dump, which names the flows a DNAT sent elsewhere:
        // the sockets' first round waits for it alone (empty if the dump failed before it).
        let dialledSide = OneShot<[ConntrackEntry]>()
        if options.conntrack, options.sockets, matcher.stuck == nil, !options.conntrackOnlyAfterSockets, let flowTable {
            prefetched = BackgroundWork { () throws(SystemCallError) -> ConntrackTable.Dump in
                defer { dialledSide.settle([]) }
                return try flowTable.entries(
                    for: matcher.destinations, transports: matcher.transports, sideBySide: options.conntrackDumpsSideBySide,
                    directFlows: { listingDirectFlows.wait() }, dialledSide: { dialledSide.settle($0.entries) })
            }
        }
        if options.sockets, let socketTable {
            do {
                // A large purge is known as soon as its dump passes `flushFrom` sockets: the
                // reply-source dump need not wait for the rest of the walk.
                let large = SocketDiagnostics.CountSignal(count: PurgePlan.flushFrom) { listingDirectFlows.settle(false) }
                try endSockets(
                    plan, includeTCPInfo: includeTCPInfo, options: options, idle: idle, in: socketTable, report: &report,
                    signal: plan.directFlowsMayGoUnlisted ? large : nil,
                    beforeDestroying: { direct in listingDirectFlows.settle(plan.listsDirectFlows(destroying: direct)) },
                    servedElsewhere: {
                        // A pass that looks at conntrack only once a socket matched (new connects to a
                        // dead backend) looks now, for this alone: a connect dialled to it may be a DNAT's
                        // to a live one. Its entries still go only where a socket was ended.
                        if prefetched == nil, options.conntrack, options.conntrackOnlyAfterSockets, matcher.stuck == nil,
                            let flowTable
                        {
                            let look = try? flowTable.entries(for: matcher.destinations, transports: matcher.transports)
                            return look.map { plan.servedElsewhere(in: $0.entries) } ?? []
                        }
                        return prefetched == nil ? [] : plan.servedElsewhere(in: dialledSide.wait())
                    })
            } catch {
                report.stepErrors.append(error)
                report.socketWalkFailed = true
            }
        }
        listingDirectFlows.settle(true)  // the sockets' walk failed or was not made: nothing counted them
        let flushDirectFlowsUnlisted = prefetched != nil && !listingDirectFlows.wait()
        // The entries' first dump: it names the sockets a NAT hid (their remote is a VIP), which go
        // before the entries do, like the direct ones.
        var firstDump: ConntrackTable.Dump?
        var conntrackFailed = false
        if let prefetched {
            do { firstDump = try prefetched.wait() } catch {
                report.stepErrors.append(error)
                conntrackFailed = true
            }
        }
        if let firstDump, let socketTable {
            let translated = TranslatedFlows(firstDump.entries, matcher: matcher)
            if !translated.isEmpty {
                do {
                    try endTranslatedSockets(
                        translated, plan: plan, includeTCPInfo: includeTCPInfo, options: options, idle: idle, in: socketTable,
                        report: &report)
                } catch { report.stepErrors.append(error) }
            }
        }
        let conntrackWanted = (matcher.stuck == nil && !options.conntrackOnlyAfterSockets) || !report.sockets.isEmpty || firstDump != nil
        if options.conntrack, !conntrackFailed, let flowTable, conntrackWanted {
            do {
                try deleteEntries(
                    plan, options: options, idle: idle, in: flowTable, first: firstDump,
                    flushingDirectFlowsUnlisted: flushDirectFlowsUnlisted, report: &report)
            } catch { report.stepErrors.append(error) }
        }
        report.durationSeconds = (ContinuousClock.now - started).seconds
        return report
    }

    /// `beforeDestroying`: told, once, how many sockets the first round would destroy; only then is
    /// `servedElsewhere` asked (it waits for the conntrack dump, whose reply side waited for that count).
    private func endSockets(
        _ plan: PurgePlan, includeTCPInfo: Bool, options: Options, idle: PurgeReport.Outcome, in diagnostics: any SocketTable,
        report: inout PurgeReport, signal: SocketDiagnostics.CountSignal? = nil, beforeDestroying: (Int) -> Void = { _ in },
        servedElsewhere: () -> Set<Flow> = { [] }
    ) throws(SystemCallError) {
        let matcher = plan.matcher
        var query = matcher.socketQuery
        query.includeTCPInfo = query.includeTCPInfo || includeTCPInfo
        var ended = Set<UInt64>()
        var refused = Set<UInt64>()
        var unconfirmed: [DiagnosedSocket] = []
        var elsewhere: Set<Flow> = []
        var listening: [Endpoint] = []
        for round in 0...options.maximumExtraRounds {
            // The agent's own sockets as they were before the dump and after it: a probe that closed
            // in between is in the dump but no longer in the table (its socket lingers as it closes).
            let ownBefore = options.sparingOwnSockets ? diagnostics.ownSocketInodes() : []
            let dump = try diagnostics.sockets(matching: query, signal: round == 0 ? signal : nil)
            report.note(dumpRestarts: dump.restarts, redone: dump.redone, operation: .socketDiagnosis)
            // A destroy whose ack was lost took effect if its socket is gone now: it counts as ended.
            // One still listed is a target again; one a torn dump may have missed waits for a whole look.
            let present = unconfirmed.isEmpty ? [] : Set(dump.sockets.map(\.id.cookie))
            unconfirmed.removeAll { socket in
                guard !present.contains(socket.id.cookie) else { return true }
                guard !dump.interrupted else { return false }
                ended.insert(socket.id.cookie)
                report.sockets.append(.init(socket: socket, outcome: .ended))
                return true
            }
            // What a torn dump kept unsettled may have ended: the limit's room counts it.
            let endedOrUnsettled = unconfirmed.isEmpty ? ended : ended.union(unconfirmed.map(\.id.cookie))
            func choose() -> PurgePlan.SocketChoice {
                plan.directSockets(
                    in: dump.sockets, ended: endedOrUnsettled, refused: refused, servedElsewhere: elsewhere, listening: listening
                ) {
                    ownBefore.union(diagnostics.ownSocketInodes())
                }
            }
            var choice = choose()
            if round == 0 {
                beforeDestroying(choice.destroy.count)
                if !choice.destroy.isEmpty {
                    elsewhere = servedElsewhere()
                    if options.sparingInbound { listening = try diagnostics.listeningEndpoints() }
                    // Chosen again only when something is to be spared: the common purge filters its dump once.
                    if !elsewhere.isEmpty || !listening.isEmpty { choice = choose() }
                }
            }
            report.ownFlows.formUnion(choice.own.map(Flow.init))
            if options.socketLimit != nil {
                // The latest round's count: what an earlier round left may have closed since, or been
                // ended by a later round. Their flows stay a union (less what ended, below): an entry
                // kept too long costs nothing, one deleted under a live socket loses its RST's NAT.
                report.socketsLeftByLimit = choice.leftByLimit.count
                report.flowsLeftByLimit.formUnion(choice.leftByLimit.map(Flow.init))
            }
            let targets = choice.destroy
            guard plan.acting else {
                report.sockets += targets.map { .init(socket: $0, outcome: idle) }
                return
            }
            let acks = try diagnostics.destroy(targets)
            var retry = dump.interrupted
            for (socket, ack) in zip(targets, acks) {
                let outcome = PurgeReport.Outcome.destroy(ack)
                if outcome == .unconfirmed {
                    retry = true
                    unconfirmed.append(socket)
                    report.note(1, NetlinkTrouble(.socketDestroy, .acksLost))
                    continue
                }
                if outcome.error == nil { ended.insert(socket.id.cookie) } else { refused.insert(socket.id.cookie) }
                report.sockets.append(.init(socket: socket, outcome: outcome))
            }
            // A refused destroy will be refused again: only lost acks and torn dumps earn another round.
            guard retry, round < options.maximumExtraRounds else {
                // No round looks again: each lost ack is settled by a lookup of its socket.
                for socket in unconfirmed {
                    let outcome = Self.settle(lostAckOf: socket, in: diagnostics)
                    if outcome == .ended { ended.insert(socket.id.cookie) }
                    report.sockets.append(.init(socket: socket, outcome: outcome))
                }
                if !report.flowsLeftByLimit.isEmpty {
                    // A socket a round left and a later one ended: its entry goes like the others'.
                    report.flowsLeftByLimit.subtract(report.sockets.filter { ended.contains($0.socket.id.cookie) }.map { Flow($0.socket) })
                }
                return
            }
            report.extraRounds += 1
        }
    }

    /// Ends the sockets whose 4-tuple is the original tuple of an entry a NAT sent to a destination:
    /// one filtered dump toward the VIPs, then only the exact flows (another flow to the same VIP, NAT'd
    /// to a live backend, has another tuple). One round: a lost ack is settled by a lookup of its socket,
    /// and one still there is left to the agent's next reap.
    private func endTranslatedSockets(
        _ translated: TranslatedFlows, plan: PurgePlan, includeTCPInfo: Bool, options: Options, idle: PurgeReport.Outcome,
        in diagnostics: any SocketTable, report: inout PurgeReport
    ) throws(SystemCallError) {
        var query = translated.socketQuery(states: plan.matcher.states)
        query.includeTCPInfo = includeTCPInfo
        let ownBefore = options.sparingOwnSockets ? diagnostics.ownSocketInodes() : []
        let dump = try diagnostics.sockets(matching: query)
        let choice = plan.translatedSockets(
            in: dump.sockets, translated: translated, reported: Set(report.sockets.map(\.socket.id.cookie)),
            countedByLimit: report.socketsCountedByLimit
        ) { ownBefore.union(diagnostics.ownSocketInodes()) }
        report.ownFlows.formUnion(choice.own.map(Flow.init))
        report.socketsLeftByLimit += choice.leftByLimit.count
        report.flowsLeftByLimit.formUnion(choice.leftByLimit.map(Flow.init))
        let targets = choice.destroy
        guard plan.acting else {
            report.sockets += targets.map { .init(socket: $0, outcome: idle, throughConntrack: true) }
            return
        }
        let acks = try diagnostics.destroy(targets)
        for (socket, ack) in zip(targets, acks) {
            var outcome = PurgeReport.Outcome.destroy(ack)
            if outcome == .unconfirmed {
                report.note(1, NetlinkTrouble(.socketDestroy, .acksLost))
                outcome = Self.settle(lostAckOf: socket, in: diagnostics)
            }
            report.sockets.append(.init(socket: socket, outcome: outcome, throughConntrack: true))
        }
    }

    private func deleteEntries(
        _ plan: PurgePlan, options: Options, idle: PurgeReport.Outcome, in table: any FlowTable, first prefetched: ConntrackTable.Dump?,
        flushingDirectFlowsUnlisted: Bool, report: inout PurgeReport
    ) throws(SystemCallError) {
        let matcher = plan.matcher
        var deleted = Set<ConntrackEntry.Identity>()
        var unconfirmed: [PurgePlan.EntryTarget] = []
        for round in 0...options.maximumExtraRounds {
            var dump: ConntrackTable.Dump
            if round == 0, let prefetched {
                dump = prefetched
            } else {
                dump = try table.entries(
                    for: matcher.destinations, transports: matcher.transports, sideBySide: options.conntrackDumpsSideBySide)
            }
            var originalSideFlushed = false
            let dialledElsewhere = !plan.servedElsewhere(in: dump.entries).isEmpty
            if round == 0, flushingDirectFlowsUnlisted {
                // A flow dialled to it but served elsewhere would go with that flush: list instead.
                if !dialledElsewhere { originalSideFlushed = try flushDirectFlows(plan, listed: dump, in: table, report: &report) }
                // Refused (an older kernel) or failed: the direct entries were never listed; list them now.
                if !originalSideFlushed {
                    dump = try table.entries(for: matcher.destinations, transports: matcher.transports).merged(with: dump)
                }
            }
            report.note(dumpRestarts: dump.restarts, redone: dump.redone, operation: .conntrackGet)
            if round == 0 { report.conntrackInOtherZones = plan.inOtherZones(dump.entries) }
            // As with sockets: a delete whose ack was lost took effect if a whole dump no longer lists
            // its entry; one still listed is a target again.
            var retried = Set<ConntrackEntry.Identity>()
            if !unconfirmed.isEmpty {
                let listed = Set(dump.entries.map(\.identity))
                unconfirmed.removeAll { target in
                    guard !listed.contains(target.entry.identity) else {
                        retried.insert(target.entry.identity)
                        return true
                    }
                    guard !dump.interrupted else { return false }
                    report.conntrack.append(.init(entry: target.entry, matchedBy: target.matchedBy, outcome: .ended))
                    return true
                }
            }
            let targets = plan.entries(
                in: dump.entries, deleted: deleted, leftByLimit: report.flowsLeftByLimit, own: report.ownFlows,
                onlyFlows: plan.deletesOnlyEntriesOfReportedSockets ? Set(report.sockets.map { Flow($0.socket) }) : nil)
            guard plan.acting else {
                report.conntrack += targets.map { .init(entry: $0.entry, matchedBy: $0.matchedBy, outcome: idle) }
                return
            }
            var remaining = targets
            if round == 0 {
                remaining = try flush(
                    targets, plan: plan, originalSideFlushed: originalSideFlushed, dialledElsewhere: dialledElsewhere, in: table,
                    report: &report)
            }
            let acks = try table.delete(remaining.map(\.entry))
            var retry = dump.interrupted
            for ((entry, matchedBy), ack) in zip(remaining, acks) {
                var outcome = PurgeReport.Outcome.delete(ack)
                // A dump may still list an entry the lost ack's delete took as it dies: the kernel no
                // longer having it is what a dump not listing it would have said.
                if outcome == .alreadyGone, !retried.isEmpty, retried.contains(entry.identity) { outcome = .ended }
                if outcome == .unconfirmed {
                    retry = true
                    unconfirmed.append((entry, matchedBy))
                    report.note(1, NetlinkTrouble(.conntrackDelete, .acksLost))
                    continue
                }
                report.conntrack.append(.init(entry: entry, matchedBy: matchedBy, outcome: outcome))
            }
            guard retry, round < options.maximumExtraRounds else {
                if !unconfirmed.isEmpty {
                    Self.settle(
                        lostAcks: unconfirmed, toward: matcher.destinations, transports: matcher.transports, in: table, report: &report)
                }
                return
            }
            report.extraRounds += 1
            // The next round's dump still holds what this run deleted a moment ago, or what had
            // already gone (its delete said ENOENT): neither is a target again.
            deleted = Set(report.conntrack.filter { $0.outcome.error == nil }.map(\.entry.identity))
        }
    }

    /// Flushes the original-destination side of every destination before any dump listed its direct
    /// flows; true when the kernel did. What it took is counted by the table's size before and after
    /// (see `PurgePlan.flushedUnlisted`).
    private func flushDirectFlows(
        _ plan: PurgePlan, listed: ConntrackTable.Dump, in table: any FlowTable, report: inout PurgeReport
    ) throws(SystemCallError) -> Bool {
        guard table.verifyFlush() else { return false }
        let requests = plan.flushRequests([.originalDestination])
        let before = try? table.entryCount()
        let acknowledgements = try table.flush(requests)
        report.note(acknowledgements.count { $0 == .unconfirmed }, NetlinkTrouble(.conntrackDelete, .acksLost))
        report.conntrackFlushes += acknowledgements.count { $0 == .done }
        guard !acknowledgements.contains(where: { $0 != .done }) else { return false }
        if let before, let after = try? table.entryCount() {
            report.conntrackFlushedUnlisted += plan.flushedUnlisted(before: before, after: after, listed: listed.entries)
        }
        return true
    }

    /// Sends the flushes the plan asks for `targets` and reports what they took; returns the targets
    /// left for exact deletes (all of them when the kernel refuses the flush). A flush also deletes
    /// what appeared since the dump, toward the same dead destination: the report counts what the
    /// dump saw.
    private func flush(
        _ targets: [PurgePlan.EntryTarget], plan: PurgePlan, originalSideFlushed: Bool, dialledElsewhere: Bool, in table: any FlowTable,
        report: inout PurgeReport
    ) throws(SystemCallError) -> [PurgePlan.EntryTarget] {
        // Asked now, not when the plan was made: a flush refused earlier in this process is not sent
        // again, and the process's first flush waits for the canary's trial.
        var current = plan.knowing(flushSupported: table.flushSupported)
        func sidesToFlush() -> Set<ConntrackTable.FlushSide>? {
            current.flushSides(
                for: targets, originalSideFlushed: originalSideFlushed, limitLeftSockets: !report.flowsLeftByLimit.isEmpty,
                ownFlows: !report.ownFlows.isEmpty, dialledElsewhere: dialledElsewhere)
        }
        guard var sides = sidesToFlush() else { return targets }
        if !sides.isEmpty, current.flushSupported == nil {
            current = plan.knowing(flushSupported: table.verifyFlush())
            guard let verified = sidesToFlush() else { return targets }
            sides = verified
        }
        var flushed: Set<ConntrackTable.FlushSide> = originalSideFlushed ? [.originalDestination] : []
        if !sides.isEmpty {
            let acknowledgements = try table.flush(current.flushRequests(sides))
            // A lost ack says nothing of what the kernel did: the exact deletes below settle it.
            report.note(
                acknowledgements.count { $0 == .unconfirmed }, NetlinkTrouble(.conntrackDelete, .acksLost))
            report.conntrackFlushes += acknowledgements.count { $0 == .done }
            // Refused (an older kernel) or failed: nothing is known deleted; exact deletes do it.
            if !acknowledgements.contains(where: { $0 != .done }) { flushed.formUnion(sides) }
        }
        let (byFlush, exact) = current.afterFlushes(targets, flushed: flushed)
        report.conntrack.reserveCapacity(report.conntrack.count + byFlush.count)
        for (entry, matchedBy) in byFlush {
            report.conntrack.append(.init(entry: entry, matchedBy: matchedBy, outcome: .ended, byFlush: true))
        }
        return exact
    }

    /// Ends one flow a conntrack announcement named: its local socket found by exact 4-tuple (a hash
    /// lookup in the kernel, no walk) and destroyed by its cookie, unless it is this process's own
    /// or neither connecting nor connected; then the entry. A forwarded flow has no local socket:
    /// only its entry goes.
    public func endFlow(_ entry: ConntrackEntry, options: Options) -> PurgeReport {
        let started = ContinuousClock.now
        var report = PurgeReport()
        report.stepErrors = openingErrors
        let acting = !options.dryRun
        if options.sockets, let socketTable {
            do {
                let id = SocketID(source: entry.original.source, destination: entry.original.destination)
                let found = try socketTable.socket(exactly: id, family: SocketFamily(entry.family), transport: entry.transport)
                if let found, options.sparingOwnSockets, socketTable.ownSocketInodes().contains(found.inode) {
                    // The agent's own probe: neither it nor its entry is touched.
                    report.durationSeconds = (ContinuousClock.now - started).seconds
                    return report
                }
                if let socket = found, [.synSent, .established].contains(socket.state) {
                    var outcome: PurgeReport.Outcome = acting ? .destroy(try socketTable.destroy([socket])[0]) : .wouldEnd
                    if outcome == .unconfirmed {
                        report.note(1, NetlinkTrouble(.socketDestroy, .acksLost))
                        outcome = Self.settle(lostAckOf: socket, in: socketTable)
                    }
                    report.sockets.append(
                        .init(socket: socket, outcome: outcome, throughConntrack: entry.reply.source != entry.original.destination))
                }
            } catch { report.stepErrors.append(error) }
        }
        if options.conntrack, let flowTable {
            let matchedBy: DestinationMatcher.ConntrackMatch =
                entry.reply.source == entry.original.destination ? .originalDestination : .replySource
            if acting {
                do {
                    let outcome = PurgeReport.Outcome.delete(try flowTable.delete([entry])[0])
                    if outcome == .unconfirmed {
                        // The backend is who answers the flow, NAT'd or not: a dump toward it lists the entry if it is there.
                        report.note(1, NetlinkTrouble(.conntrackDelete, .acksLost))
                        let backend = Destination(address: entry.reply.source.address, port: entry.reply.source.port)
                        Self.settle(
                            lostAcks: [(entry, matchedBy)], toward: [backend], transports: [entry.transport], in: flowTable, report: &report
                        )
                    } else {
                        report.conntrack.append(.init(entry: entry, matchedBy: matchedBy, outcome: outcome))
                    }
                } catch { report.stepErrors.append(error) }
            } else {
                report.conntrack.append(.init(entry: entry, matchedBy: matchedBy, outcome: .wouldEnd))
            }
        }
        report.durationSeconds = (ContinuousClock.now - started).seconds
        return report
    }

    /// Ends the one socket `id` names (4-tuple and cookie) after a fresh look at it, tcp_info
    /// included: only if it is still the same socket, still established, not this process's own, and
    /// `stillWanted` agrees with what the kernel says of it now. A rebalance chose it from a census
    /// that may be a moment old; data that began to flow since must save it.
    public func endSocket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, options: Options,
        stillWanted: (DiagnosedSocket) -> Bool
    ) -> PurgeReport {
        let started = ContinuousClock.now
        var report = PurgeReport()
        report.stepErrors = openingErrors
        if let socketTable {
            do {
                if let socket = try socketTable.socket(exactly: id, family: family, transport: transport, includeTCPInfo: true),
                    socket.id.cookie == id.cookie, socket.state == .established,
                    !(options.sparingOwnSockets && socketTable.ownSocketInodes().contains(socket.inode)), stillWanted(socket)
                {
                    var outcome: PurgeReport.Outcome = options.dryRun ? .wouldEnd : .destroy(try socketTable.destroy([socket])[0])
                    if outcome == .unconfirmed {
                        report.note(1, NetlinkTrouble(.socketDestroy, .acksLost))
                        outcome = Self.settle(lostAckOf: socket, in: socketTable)
                    }
                    report.sockets.append(.init(socket: socket, outcome: outcome))
                }
            } catch { report.stepErrors.append(error) }
        }
        report.durationSeconds = (ContinuousClock.now - started).seconds
        return report
    }
}

extension PurgeReport.Outcome {
    /// What the kernel's answer to one destroy or delete means for the item: ENOENT is done too (it
    /// closed or expired meanwhile, or the cookie names an older socket on the tuple).
    init(_ acknowledgement: Acknowledgement, of operation: NetlinkOperation) {
        switch acknowledgement {
        case .done: self = .ended
        case .failed(.noSuchFileOrDirectory): self = .alreadyGone
        case .failed(let errno): self = .failed(SystemCallError(operation, errno: errno))
        case .unconfirmed: self = .unconfirmed
        }
    }

    static func destroy(_ acknowledgement: Acknowledgement) -> Self { .init(acknowledgement, of: .socketDestroy) }

    static func delete(_ acknowledgement: Acknowledgement) -> Self { .init(acknowledgement, of: .conntrackDelete) }
}
