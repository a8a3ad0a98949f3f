import Conntrack
import NetworkAddress
import Reaper
import SockDiag
import OS

/// `ReapKernel` on the kernel workers: one dedicated thread per network namespace owns its
/// netlink sockets (see KernelWorker). Keeps the stuck detector's suspicions between scans.
public actor WorkerReapKernel: ReapKernel {
    private let workers: KernelWorkers
    /// What each pool's last stuck scan carried to the next (`StuckJudgement.Carried`).
    private var stuckCarried: [String: StuckJudgement.Carried] = [:]
    /// New-flow announcements being read, per namespace ("" for the agent's own).
    private var watches: [String: NewFlowWatch] = [:]
    /// Per pool: the connections early detection looks up between its dumps.
    private var sentinels: [String: Sentinels] = [:]

    public init(workers: KernelWorkers) {
        self.workers = workers
    }

    public func reap(_ request: KernelReapRequest, while stillRuns: @escaping @Sendable () -> Bool) async -> [NamespaceReport] {
        var options = Purger.Options(dryRun: request.dryRun)
        options.sparingOwnSockets = true
        options.conntrackDumpsSideBySide = request.namespaces == nil
        switch request.scope {
        case .full: break
        case .newConnects: options.conntrackOnlyAfterSockets = true
        case .established: options.conntrack = false
        }
        let matchers = Self.matchers(for: request)
        var remaining = request.limit
        var reports: [NamespaceReport] = []
        let found = await workers.workers(for: request.namespaces, refresh: request.refreshNamespaces)
        if case .paths(let paths)? = request.namespaces {
            // A named namespace whose file is gone is skipped until it is back, but said each pass.
            for path in paths where !found.contains(where: { $0.namespace == path }) {
                let error = SystemCallError(call: "open", argument: "netns", errno: .noSuchFileOrDirectory)
                reports.append(NamespaceReport(namespace: path, failure: "namespace gone: \(error)", error: error))
            }
        }
        for (namespace, worker) in found {
            if let pause = Failpoints.slowNamespaces[namespace ?? ""] { try? await Task.sleep(for: pause) }
            guard remaining > 0, stillRuns() else { break }
            do {
                var merged = PurgeReport()
                for matcher in matchers where remaining > 0 {
                    var limited = options
                    limited.socketLimit = remaining
                    let pass = limited
                    let report = try await worker.perform { $0.purge(matcher, options: pass) }
                    remaining -= report.socketsCountedByLimit
                    merged.absorb(report, namespace: nil)
                }
                reports.append(NamespaceReport(namespace: namespace, report: merged))
            } catch {
                if namespace != nil { await workers.drop(worker) }  // vanished, or not enterable: a fresh worker next time
                reports.append(NamespaceReport(namespace: namespace, failure: "\(error)", error: error as? SystemCallError))
            }
        }
        return reports
    }

    /// A dead backend gains nothing but new connects once its first reap ran; for TCP those are
    /// SYN_SENT sockets, which the kernel finds by state mask before running any filter program.
    /// A connected UDP socket is ESTABLISHED from its connect() on, so UDP looks at those.
    static func matchers(for request: KernelReapRequest) -> [DestinationMatcher] {
        let destination = [Destination(address: request.backend.address, port: request.backend.port)]
        switch request.scope {
        case .full:
            return [DestinationMatcher(destinations: destination, transports: request.transports, zones: request.zones)]
        case .established:
            return [
                DestinationMatcher(
                    destinations: destination, transports: request.transports, states: SocketStates([.established]), zones: request.zones)
            ]
        case .newConnects:
            var matchers: [DestinationMatcher] = []
            if request.transports.contains(.tcp) {
                matchers.append(
                    DestinationMatcher(
                        destinations: destination, transports: [.tcp], states: SocketStates([.synSent]), zones: request.zones))
            }
            if request.transports.contains(.udp) {
                matchers.append(
                    DestinationMatcher(
                        destinations: destination, transports: [.udp], states: SocketStates([.established]), zones: request.zones))
            }
            return matchers
        }
    }

    public func scanStuck(_ pool: PoolConfiguration, limit: Int, dryRun: Bool, namespaces: NamespaceSelection?) async -> [NamespaceReport] {
        let afterMilliseconds = UInt32(min(pool.stuckAfter.seconds * 1000, Double(UInt32.max)))
        let destinations = pool.backends.map { Destination(address: $0.address, port: $0.port) }
        let selected = await workers.workers(for: namespaces)
        // Look first, at every established connection toward the pool (not only the condemned): the
        // judgement weighs the whole pool, and connections in trouble that are not condemned yet.
        let everyConnection = DestinationMatcher(destinations: destinations, transports: [.tcp], states: SocketStates([.established]))
        var listing = Purger.Options(sockets: true, conntrack: false)
        listing.sparingOwnSockets = true
        let listingOptions = listing
        var listed: [DiagnosedSocket] = []
        var namespaceOf: [UInt64: String] = [:]
        for (namespace, worker) in selected {
            let report: PurgeReport
            do {
                report = try await worker.perform { $0.list(everyConnection, includeTCPInfo: true, options: listingOptions) }
            } catch {
                if namespace != nil { await workers.drop(worker) }  // vanished, or not enterable: a fresh worker next time
                // Missing evidence: a namespace unread may hold what makes this a local fault. Nothing
                // is judged, nothing carried is forgotten; the next scan looks again.
                return [NamespaceReport(namespace: namespace, failure: "\(error)", error: error as? SystemCallError)]
            }
            guard !report.socketWalkFailed else {
                return [NamespaceReport(namespace: namespace, failure: "socket dump failed: \(report.stepErrors)")]
            }
            for item in report.sockets {
                listed.append(item.socket)
                namespaceOf[item.socket.id.cookie] = namespace ?? ""
            }
        }
        let carriedIn = stuckCarried[pool.name] ?? StuckJudgement.Carried()
        let heldElsewhere = StuckJudgement.heldElsewhere(stuckCarried, besides: pool.name)
        let judgement = StuckJudgement(
            listed: listed, pool: pool.backends, stuckAfterMilliseconds: afterMilliseconds, carried: carriedIn,
            heldElsewhere: heldElsewhere, at: .now)
        stuckCarried[pool.name] = judgement.carried
        if judgement.localFault {
            var held = NamespaceReport(namespace: nil, report: PurgeReport())
            held.localFault = true
            return [held]
        }
        guard !judgement.endable.isEmpty else { return [] }
        var remaining = limit
        var reports: [NamespaceReport] = []
        for (namespace, worker) in selected {
            let endableHere = judgement.endable.filter { namespaceOf[$0] == namespace ?? "" }
            guard !endableHere.isEmpty else { continue }
            // The purge dumps again and ends only what the rule still condemns there, among what the
            // judgement allowed: one acknowledged in between is spared.
            let matcher = DestinationMatcher(
                destinations: destinations, transports: [.tcp],
                stuck: StuckRule(afterMilliseconds: afterMilliseconds, observedWaits: judgement.observedWaits, onlyAmong: endableHere))
            var limited = Purger.Options(dryRun: dryRun)
            limited.sparingOwnSockets = true
            limited.socketLimit = max(0, remaining)
            let options = limited
            do {
                let report = try await worker.perform { $0.purge(matcher, options: options) }
                // As a reap's: the limit is the budget's grant, which is charged only what ended.
                remaining -= report.socketsCountedByLimit
                reports.append(NamespaceReport(namespace: namespace, report: report))
            } catch {
                reports.append(NamespaceReport(namespace: namespace, failure: "\(error)"))
            }
        }
        return reports
    }

    public func evidence(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async
        -> SegmentEvidence
    {
        // NAT'd flows count too: conntrack names the sockets a VIP hides.
        let (reports, complete, unreadable) = await listEstablishedChecked(
            toward: backend, transports: [.tcp], conntrack: true, tcpInfo: true, namespaces: namespaces)
        let sockets = reports.flatMap(\.sockets)
        // A receive-only socket (a watch through a proxy) gets data and sends nothing, so its last ACK
        // can be minutes old while the peer is alive: either kind of segment counts.
        let youngest = sockets.compactMap { $0.socket.tcpInfo.map { min($0.lastAckReceivedMilliseconds, $0.lastDataReceivedMilliseconds) } }
            .min()
        // Taken after the dumps: a segment's time is then never placed earlier than it came.
        return SegmentEvidence(
            at: .now, sockets: sockets.count, youngestSegmentAge: youngest.map { .milliseconds(Int64($0)) }, complete: complete,
            unreadable: unreadable)
    }

    /// The connections a paced close can end: established, direct (a drain pass looks at no conntrack).
    public func countConnections(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async -> Int
    {
        await listEstablished(toward: backend, transports: transports, conntrack: false, tcpInfo: false, namespaces: namespaces)
            .reduce(0) { $0 + $1.sockets.count }
    }

    /// Early detection's look at a pool, made cheap: a dump walks the whole TCP hash table (about
    /// 2.5 ms of kernel time on a large host, whatever the pool holds), too much twenty times a second.
    /// So every `sentinelRefresh` one dump with tcp_info picks, per backend, the `sentinelsPerBackend`
    /// connections that sent data most recently (the ones that retransmit first when it dies), and
    /// each look in between is a hash lookup of each of those by its exact 4-tuple.
    public func retransmissions(of pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> RetransmissionCount {
        let now = ContinuousClock.now
        if sentinels[pool.name].map({ now - $0.refreshedAt >= Self.sentinelRefresh || $0.backends != pool.backends }) ?? true {
            sentinels[pool.name] = await pickSentinels(pool, namespaces: namespaces, at: now)
        }
        guard let picked = sentinels[pool.name] else { return RetransmissionCount() }
        var count = RetransmissionCount()
        count.shortestRTO = picked.shortestRTO
        var alive: [(worker: KernelWorker, sockets: [DiagnosedSocket])] = []
        for (worker, sockets) in picked.sockets {
            guard let looked = try? await worker.perform({ $0.lookUp(sockets) }) else { continue }
            var still: [DiagnosedSocket] = []
            for case let socket? in looked {
                still.append(socket)
                let backend = socket.remote.unmapped
                count.connections[backend, default: 0] += 1
                if socket.timer == DiagnosedSocket.retransmitTimer {
                    count.armed = true
                    if socket.retransmitsOnTimer > 0 { count.retransmitting[backend, default: 0] += 1 }
                }
            }
            alive.append((worker, still))
        }
        sentinels[pool.name]?.sockets = alive
        return count
    }

    static let sentinelRefresh: Duration = .seconds(5)
    static let sentinelsPerBackend = 4

    struct Sentinels {
        var backends: [Endpoint]
        var refreshedAt: ContinuousClock.Instant
        var sockets: [(worker: KernelWorker, sockets: [DiagnosedSocket])]
        /// From the pick's dump: the lookups after it carry no tcp_info (a hash lookup each).
        var shortestRTO: Duration? = nil
    }

    private func pickSentinels(_ pool: PoolConfiguration, namespaces: NamespaceSelection?, at now: ContinuousClock.Instant) async
        -> Sentinels
    {
        var picked = Sentinels(backends: pool.backends, refreshedAt: now, sockets: [])
        let backends = pool.backends
        for worker in await workers.workers(for: namespaces).map(\.worker) {
            guard let sockets = try? await worker.perform({ $0.establishedSockets(toward: backends) }) else { continue }
            let chosen = Dictionary(grouping: sockets, by: { $0.remote.unmapped }).values.flatMap { group in
                group.sorted { ($0.tcpInfo?.lastDataSentMilliseconds ?? .max) < ($1.tcpInfo?.lastDataSentMilliseconds ?? .max) }
                    .prefix(Self.sentinelsPerBackend)
            }
            picked.sockets.append((worker, Array(chosen)))
        }
        picked.shortestRTO = picked.sockets.flatMap(\.sockets).compactMap(\.tcpInfo?.rtoMicroseconds).min().map { .microseconds($0) }
        return picked
    }

    /// The backend's established sockets, the agent's own left out, listed in every namespace side by
    /// side (read-only, each on its namespace's own thread); a namespace that cannot be read adds none.
    private func listEstablished(
        toward backend: Endpoint, transports: Set<TransportProtocol>, conntrack: Bool, tcpInfo: Bool, namespaces: NamespaceSelection?
    ) async -> [PurgeReport] {
        await listEstablishedChecked(
            toward: backend, transports: transports, conntrack: conntrack, tcpInfo: tcpInfo, namespaces: namespaces
        )
        .reports
    }

    /// The reports, and whether they are the whole picture: every namespace named was read and every
    /// dump ran to its end (missing evidence of life is no evidence of death).
    private func listEstablishedChecked(
        toward backend: Endpoint, transports: Set<TransportProtocol>, conntrack: Bool, tcpInfo: Bool, namespaces: NamespaceSelection?
    ) async -> (reports: [PurgeReport], complete: Bool, unreadable: [String]) {
        let matcher = DestinationMatcher(
            destinations: [Destination(address: backend.address, port: backend.port)], transports: transports,
            states: SocketStates([.established]))
        var sparing = Purger.Options(sockets: true, conntrack: conntrack)
        sparing.sparingOwnSockets = true
        let options = sparing
        let selected = await workers.workers(for: namespaces)
        var complete = true
        var unreadable: [String] = []
        if case .paths(let paths)? = namespaces, selected.count < paths.count {
            complete = false
            unreadable += paths.filter { path in !selected.contains { $0.namespace == path } }.map { "\($0): not a namespace now" }
        }
        let reports = await withTaskGroup(of: (report: PurgeReport?, failure: String?).self) { dumps in
            for (namespace, worker) in selected {
                dumps.addTask {
                    do { return (try await worker.perform { $0.list(matcher, includeTCPInfo: tcpInfo, options: options) }, nil) } catch {
                        // A namespace that vanished took its sockets with it; one that cannot be entered did not.
                        return (nil, Self.vanished(error) ? nil : "\(namespace ?? "own"): \(error)")
                    }
                }
            }
            var reports: [(report: PurgeReport?, failure: String?)] = []
            for await report in dumps { reports.append(report) }
            return reports
        }
        unreadable += reports.compactMap(\.failure)
        // A dump begun again after ENOBUFS ran to its end (a trouble ridden out); a failed socket walk did not.
        if !unreadable.isEmpty || reports.contains(where: { $0.report?.socketWalkFailed == true }) { complete = false }
        return (reports.compactMap(\.report), complete, unreadable)
    }

    /// The namespace is gone (its file removed, its worker stopped): nothing there to look at.
    static func vanished(_ error: any Error) -> Bool {
        guard let error = error as? SystemCallError else { return false }
        return error == NamespaceThread.stoppedError || error.errno == .noSuchFileOrDirectory || error.errno == .invalidArgument
    }

    public func watchNewFlows(
        _ key: BackendKey, transports: Set<TransportProtocol>, zones: ConntrackZones, namespaces: NamespaceSelection?,
        announce: @escaping @Sendable (AnnouncedFlow) -> Void, lost: @escaping @Sendable (_ stopped: Bool) -> Void
    ) async -> Bool {
        // Every namespace on the node would take a thread each: `all` keeps to walking.
        if case .all? = namespaces { return false }
        var announcedEverywhere = true
        for (namespace, worker) in await workers.workers(for: namespaces) {
            let label = namespace ?? ""
            // A watch whose read failed announces nothing more: subscribe again.
            if watches[label]?.failed ?? true {
                guard let started = await NewFlowWatch.start(namespace: namespace, on: worker) else {
                    announcedEverywhere = false
                    continue
                }
                // Another call may have subscribed here meanwhile: one reader a namespace.
                if let current = watches[label], !current.failed { started.stop() } else { watches[label] = started }
            }
            watches[label]?.watch(key, .init(backend: key.backend, transports: transports, zones: zones, announce: announce, lost: lost))
            // A namespace whose conntrack tracks nothing announces nothing: walking stays the way there.
            let tracked = (try? await worker.perform { _ in ConntrackTracking.trackedFlows() }) ?? nil
            announcedEverywhere = announcedEverywhere && (tracked ?? 0) > 0
        }
        return announcedEverywhere
    }

    public func unwatchNewFlows(_ key: BackendKey) async {
        for (label, watch) in watches {
            watch.unwatch(key)
            if watch.isEmpty { watches[label] = nil }
        }
    }

    public func endFlow(_ flow: AnnouncedFlow, dryRun: Bool) async -> [NamespaceReport] {
        let worker: KernelWorker?
        if let namespace = flow.namespace {
            worker = await workers.workers(for: .paths([namespace])).first?.worker
        } else {
            worker = workers.own
        }
        guard let worker else { return [NamespaceReport(namespace: flow.namespace, failure: "namespace gone")] }
        var options = Purger.Options(dryRun: dryRun)
        options.sparingOwnSockets = true
        let chosen = options
        do {
            let report = try await worker.perform { $0.endFlow(flow.entry, options: chosen) }
            return [NamespaceReport(namespace: flow.namespace, report: report)]
        } catch {
            return [NamespaceReport(namespace: flow.namespace, failure: "\(error)")]
        }
    }
}

extension WorkerReapKernel {
    public func census(_ pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> [ConnectionSample] {
        let matcher = DestinationMatcher(
            destinations: pool.backends.map { Destination(address: $0.address, port: $0.port) }, transports: [.tcp],
            states: SocketStates([.established]))
        var sparing = Purger.Options(sockets: true, conntrack: false)
        sparing.sparingOwnSockets = true
        let options = sparing
        let backends = Set(pool.backends)
        let workers = await workers.workers(for: namespaces)
        return await withTaskGroup(of: [ConnectionSample].self) { dumps in
            for (namespace, worker) in workers {
                dumps.addTask {
                    let report = try? await worker.perform { $0.list(matcher, includeTCPInfo: true, options: options) }
                    return (report?.sockets ?? []).compactMap { ConnectionSample($0.socket, namespace: namespace) }
                        .filter { backends.contains($0.backend) }
                }
            }
            var connections: [ConnectionSample] = []
            for await part in dumps { connections += part }
            return connections
        }
    }

    public func endQuietConnection(_ connection: ConnectionSample, dryRun: Bool) async -> [NamespaceReport] {
        let worker: KernelWorker?
        if let namespace = connection.namespace {
            worker = await workers.workers(for: .paths([namespace])).first?.worker
        } else {
            worker = workers.own
        }
        guard let worker else { return [NamespaceReport(namespace: connection.namespace, failure: "namespace gone")] }
        var options = Purger.Options(sockets: true, conntrack: false, dryRun: dryRun)
        options.sparingOwnSockets = true
        let chosen = options
        let id = SocketID(source: connection.local, destination: connection.remote, cookie: connection.cookie)
        let family = SocketFamily(connection.remote.address.family)
        do {
            let report = try await worker.perform { purger in
                purger.endSocket(exactly: id, family: family, transport: .tcp, options: chosen) { socket in
                    ConnectionSample(socket, namespace: connection.namespace).map { !$0.carriesData } ?? false
                }
            }
            return [NamespaceReport(namespace: connection.namespace, report: report)]
        } catch {
            return [NamespaceReport(namespace: connection.namespace, failure: "\(error)")]
        }
    }
}

extension ConnectionSample {
    /// A dumped TCP socket as the rebalancing rules see it; nil without tcp_info (no reading, no move).
    init?(_ socket: DiagnosedSocket, namespace: String?) {
        guard socket.transport == .tcp, let info = socket.tcpInfo else { return nil }
        // A dual-stack socket names an IPv4 backend as ::ffff:a.b.c.d: it counts for that backend.
        self.init(
            backend: socket.remote.unmapped, local: socket.local, remote: socket.remote, cookie: socket.id.cookie, namespace: namespace,
            unacked: info.unacked,
            sendQueue: socket.sendQueue, receiveQueue: socket.receiveQueue,
            sinceDataSent: .milliseconds(Int64(info.lastDataSentMilliseconds)),
            sinceDataReceived: .milliseconds(Int64(info.lastDataReceivedMilliseconds)),
            owner: ConnectionOwner(uid: socket.uid, cgroup: socket.cgroup))
    }
}

/// Whether conntrack tracks flows in the calling thread's network namespace: it does only once some
/// rule uses it (NAT, `ct state`), which kube-proxy's do on a node. /proc/sys/net is the namespace
/// of the thread that reads it.
enum ConntrackTracking {
    static func trackedFlows() -> Int? {
        FileStatus.readText("/proc/sys/net/netfilter/nf_conntrack_count").flatMap {
            Int($0.trimmingPrefix(while: \.isWhitespace).prefix { $0.isNumber })
        }
    }
}
