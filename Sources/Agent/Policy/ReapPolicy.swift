import OS
import Health
import NetworkAddress

/// The one place that decides which connections the agent ends: a value that takes events (probe
/// results, evidence from the kernel, what a reap did, the clock) and returns actions. It does no
/// I/O; `ReapExecutor` carries its actions out and feeds the results back. See README "Backend
/// states" for the rules in prose.
///
/// The rules, and why:
/// - `fall` failed probes alone never end a connection. A probe can fail because the backend is
///   draining (kube-apiserver answers /readyz 503 while it keeps serving every watch) or overloaded
///   (OpenShift's failover loop, incident 2): resetting those connections turns a routine event into
///   an outage. The failure class says which: a probe that reached the process (`unhealthy`) means
///   something is there.
/// - Only when the last `fall` probes found nothing answering (refused or unreachable) can the
///   backend be dead, and even then its own connections are asked first: any segment received
///   after the earliest of those probes ended means the data path lives. The window starts when a
///   failed probe *ended*, not when it was sent: a backend that died while a probe was in flight
///   died before that probe timed out, so nothing it sent before its death falls in the window.
/// - A dead backend is reaped at once and kept reaped (new connects fail fast), never while every
///   other backend of the pool is failing too (the prober is then the likely fault), and never
///   past the node's reconnect-storm budget.
/// - An unhealthy backend keeps its connections for `drain_timeout`, then they are closed a tenth
///   at a time per second: a backend that accepts but never answers must not hold clients forever.
public struct ReapPolicy: Sendable {
    public typealias Instant = ContinuousClock.Instant

    public enum Event: Sendable {
        case probed(BackendKey, ProbeResult, at: Instant)
        case evidence(BackendKey, SegmentEvidence)
        /// The established connections toward a backend whose drain timeout passed.
        case counted(BackendKey, connections: Int, at: Instant)
        case reaped(ReapOutcome)
        case tick(Instant)
        /// Whether conntrack announces every new flow toward a dead backend in all its namespaces.
        case watching(BackendKey, announced: Bool)
        /// Conntrack announced a new flow toward (or NAT'd to) a dead backend.
        case newFlow(BackendKey, AnnouncedFlow, at: Instant)
        /// Announcements were dropped (the queue overran): a full pass must look for what they named.
        case announcementsLost(BackendKey, at: Instant)
        /// A rebalancing pool's established connections, every backend's, with their tcp_info.
        case censused(pool: String, [ConnectionSample], at: Instant)
        /// The local conntrack table filled (new flows dropped here) or drained.
        case conntrackTable(full: Bool)
        /// A stuck scan found every backend of the pool stuck at once and ended nothing.
        case stuckLocalFault(pool: String)
    }

    /// What one reap pass did, as far as the policy cares.
    public struct ReapOutcome: Sendable, Equatable {
        public var pool: String
        /// nil for a stuck scan, which covers the whole pool.
        public var backend: Endpoint?
        public var reason: ReapReason
        public var ended: Int
        /// What the budget is charged: the connections it ended, its sockets and the flows whose
        /// conntrack entry went with no socket of this host behind it (forwarded or translated
        /// flows, whose clients reconnect too). At least `ended`.
        public var flowsEnded: Int
        /// Matching sockets the pass's limit left for later.
        public var leftByLimit: Int
        public var at: Instant
        /// What the pass looked at; nil for what is not a pass over one backend (a flow, a stuck scan).
        public var scope: ReapScope?
        /// What the decision reserved of the budget (the action's limit, 1 for a flow or a close);
        /// what it did not end goes back.
        public var granted: Int
        /// False: the executor dropped it unrun, its decision stale (the backend answered meanwhile).
        public var ran: Bool
        /// The episode its action was decided in (nil: a stuck scan or a rebalance close). One of an
        /// episode that is over frees its reservation and tells the current one nothing.
        public var episode: ReapEpisode?

        public init(
            pool: String, backend: Endpoint?, reason: ReapReason, ended: Int, leftByLimit: Int, at: Instant, scope: ReapScope? = nil,
            granted: Int, ran: Bool = true, flowsEnded: Int? = nil, episode: ReapEpisode? = nil
        ) {
            self.episode = episode
            self.ran = ran
            self.flowsEnded = max(ended, flowsEnded ?? ended)
            self.pool = pool
            self.backend = backend
            self.reason = reason
            self.ended = ended
            self.leftByLimit = leftByLimit
            self.at = at
            self.scope = scope
            self.granted = granted
        }
    }

    public enum Action: Sendable, Equatable {
        case changed(BackendKey, from: BackendState, to: BackendState, failure: ProbeFailure?, detail: String)
        /// Dump the backend's established sockets with tcp_info and answer with `.evidence`.
        case needEvidence(BackendKey, since: Instant)
        /// Probe these backends now, outside their schedule (a survivor is needed).
        case probeNow(pool: String, backends: [Endpoint])
        case reap(BackendKey, reason: ReapReason, limit: Int, scope: ReapScope, episode: ReapEpisode)
        /// Count the backend's established connections and answer with `.counted`.
        case countConnections(BackendKey)
        case scanStuck(pool: String, limit: Int)
        /// A reap held back. `log` is true once per episode; the count is for every one.
        case suppressed(pool: String, backend: Endpoint?, reason: SuppressReason, log: Bool)
        /// The pool's all-down guard held and lets go now: a backend answers again.
        case guardReleased(pool: String)
        /// Subscribe to conntrack's new-flow announcements for a dead backend (answer `.watching`).
        case watchNewFlows(BackendKey)
        case unwatchNewFlows(BackendKey)
        /// End exactly the flow an announcement named.
        case endFlow(BackendKey, AnnouncedFlow, reason: ReapReason, episode: ReapEpisode)
        /// List the pool's established connections with tcp_info and answer with `.censused`.
        case census(pool: String)
        /// End this one connection to rebalance, unless it carries data by the time it is looked up
        /// again (answer with `.reaped`, reason `rebalance`).
        case rebalance(BackendKey, ConnectionSample)
        case rebalanceNews(pool: String, RebalanceNews)
    }

    /// The knobs of one pool the rules read.
    public struct PoolRules: Sendable, Equatable {
        public var name: String
        public var backends: [Endpoint]
        public var rise: Int
        public var fall: Int
        public var reapOn: ReapOn
        public var drainTimeout: Duration
        public var probeTimeout: Duration
        public var probeInterval: Duration
        public var segmentEvidence: Bool
        public var stuckScanEvery: Duration?
        /// nil: the pool does not rebalance.
        public var rebalance: RebalanceSettings?
        /// The silence since the last sign of life a dead verdict needs (`PoolConfiguration.outageFloor`).
        public var outageFloor: Duration
        /// Where its reaps act (nil: the agent's own namespace).
        public var namespaces: NamespaceSelection?

        public init(_ pool: PoolConfiguration, namespaces: NamespaceSelection? = nil) {
            self.namespaces = namespaces
            name = pool.name
            backends = pool.backends
            rise = pool.rise
            fall = pool.fall
            reapOn = pool.reapOn
            drainTimeout = pool.drainTimeout
            probeTimeout = pool.probe.timeout
            probeInterval = pool.interval
            segmentEvidence = pool.hasSegmentEvidence
            outageFloor = pool.outageFloor
            stuckScanEvery = pool.stuckAfter > .zero && pool.protocols.contains(.tcp) ? Self.stuckPeriod(for: pool.stuckAfter) : nil
            // Only TCP has the tcp_info that tells a quiet connection from one carrying data.
            rebalance =
                pool.rebalance && pool.protocols.contains(.tcp)
                ? RebalanceSettings(
                    tolerancePercent: pool.rebalanceTolerance, fixedPerSecond: pool.rebalanceRate, owner: pool.rebalanceOwner) : nil
        }

        /// Whether its reaps and the other pool's can end the same sockets: they share a namespace.
        func sharesSockets(with other: PoolRules) -> Bool {
            switch (namespaces, other.namespaces) {
            case (nil, nil), (.all?, _), (_, .all?): return true
            case (.paths(let mine)?, .paths(let theirs)?): return !Set(mine).isDisjoint(with: theirs)
            default: return false
            }
        }

        /// Four scans per `stuck_after`: a blackholed connection is ended at most a quarter late.
        public static func stuckPeriod(for after: Duration) -> Duration {
            min(max(after / 4, .milliseconds(100)), .seconds(5))
        }
    }

    /// Right after the first reap, balancers reconnect at once and a least-connections one picks the
    /// emptied dead backend first: quick follow-ups abort those connects (SYN_SENT) early.
    public static let followUps: [Duration] = [.milliseconds(20), .milliseconds(50)]
    /// Passes while dead, start to start: a new connect toward it is ended within about this much
    /// (plus a tick) in its first minute down, when balancers still retry it; after that, rarely.
    public static let deadCadence: Duration = .milliseconds(150)
    public static let deadCadenceLater: Duration = .milliseconds(900)
    /// Where conntrack announces every new flow, each is ended as it comes: the walks are then only
    /// a safety net (a flow exempted from tracking).
    public static let announcedCadence: Duration = .seconds(5)
    public static let announcedCadenceLater: Duration = .seconds(30)
    public static let firstMinute: Duration = .seconds(60)
    /// Every so often a pass looks at established sockets and conntrack too (acks lost in the first
    /// reap). Established sockets toward a dead backend cannot appear: nothing completes a handshake
    /// with it; a NAT'd flow to it needs conntrack, which then announces it.
    public static let fullPassEvery: Duration = .seconds(10)
    public static let fullPassEveryAnnounced: Duration = .seconds(60)
    /// A full pass decided later than this after the look that found the backend's connections
    /// silent looks again first (a pass held by the guard, one the budget left for later, the
    /// periodic one): the look and the pass are then one event, not seconds apart.
    public static let evidenceFreshness: Duration = .milliseconds(10)
    /// Paced closes: at most a tenth of the connections a second.
    public static let pacedShare = 10
    /// How long the others' probes get to show a survivor before the all-down guard holds.
    public static let survivorGrace: Duration = .milliseconds(50)

    public private(set) var pools: [PoolRules] = []
    public internal(set) var backends: [BackendKey: BackendRecord] = [:]
    public internal(set) var budget: ReapBudget
    public private(set) var reapWhenAllDown: Bool
    /// Pools whose all-down guard holds now.
    public private(set) var guarded: Set<String> = []
    /// While the local conntrack table is full no failed probe makes a backend dead (see SuppressReason).
    public private(set) var conntrackFull = false
    /// The backends being kept reaped or drained: all a success may release and all that set the
    /// next deadline. Kept apart so neither walks every backend on every probe: 1,000 backends probed
    /// once a second made that a million record copies a second.
    private var attended: Set<BackendKey> = []
    private var nextStuckScan: [String: Instant] = [:]
    /// Backends that looked dead before `min_outage` of silence: when to look at their connections again.
    private var verdictRechecks: [BackendKey: Instant] = [:]
    private var loggedSuppressions: Set<Suppression> = []
    var rebalancing: [String: PoolRebalance] = [:]
    /// Rebalancing's picks and jitter; seeded, so a test replays them.
    var random: SeededRandom
    /// The last `ReapEpisode` handed out.
    private var lastEpisode: UInt64 = 0

    private mutating func nextEpisode() -> ReapEpisode {
        lastEpisode += 1
        return ReapEpisode(lastEpisode)
    }

    /// The episode a backend's connections are being ended in, if any (its reaping's, else its drain's).
    public func episode(of key: BackendKey) -> ReapEpisode? {
        backends[key].flatMap { $0.reaping?.episode ?? $0.drain?.episode }
    }

    struct Suppression: Hashable {
        var pool: String
        var backend: Endpoint?
        var reason: SuppressReason
    }

    public init(_ configuration: AgentConfiguration, at now: Instant = .now, seed: UInt64 = .random(in: .min ... .max)) {
        budget = ReapBudget(perSecond: configuration.maxSocketsPerSecond, burst: configuration.maxSocketsBurst)
        random = SeededRandom(seed: seed)
        reapWhenAllDown = configuration.reapWhenAllDown
        apply(configuration, at: now)
    }

    /// A reloaded configuration: backends that stay keep their state (a reload is no flap) unless
    /// their rise or fall changed; a dead one stays reaped. Returns what a backend that is no longer
    /// reaped (removed, or starting over) leaves to undo: its new-flow watch.
    @discardableResult
    public mutating func apply(_ configuration: AgentConfiguration, at now: Instant = .now) -> [Action] {
        reapWhenAllDown = configuration.reapWhenAllDown
        budget.resize(perSecond: configuration.maxSocketsPerSecond, burst: configuration.maxSocketsBurst)
        pools = configuration.pools.map { PoolRules($0, namespaces: configuration.namespaces(of: $0)) }
        var next: [BackendKey: BackendRecord] = [:]
        for pool in pools {
            for backend in pool.backends {
                let key = BackendKey(pool: pool.name, backend: backend)
                if let old = backends[key], old.health.rise == pool.rise, old.health.fall == pool.fall {
                    next[key] = old
                } else {
                    next[key] = BackendRecord(health: BackendHealth(rise: pool.rise, fall: pool.fall))
                }
            }
        }
        let unwatched = backends.filter { $0.value.reaping != nil && next[$0.key]?.reaping == nil }.keys
            .sorted { $0.description < $1.description }
        backends = next
        verdictRechecks = verdictRechecks.filter { next[$0.key] != nil }
        attended = Set(next.compactMap { key, record in record.reaping != nil || record.drain != nil ? key : nil })
        guarded = guarded.intersection(pools.map(\.name))
        var scans: [String: Instant] = [:]
        for pool in pools {
            guard let every = pool.stuckScanEvery else { continue }
            scans[pool.name] = nextStuckScan[pool.name] ?? now + every
        }
        nextStuckScan = scans
        rebalancing = carriedRebalancing(for: pools, at: now)
        return unwatched.map { .unwatchNewFlows($0) }
    }

    public func rules(of pool: String) -> PoolRules? { pools.first { $0.name == pool } }

    // MARK: - Events

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .probed(let key, let result, let at): return probed(key, result, at: at)
        case .evidence(let key, let evidence): return evidenceArrived(key, evidence)
        case .counted(let key, let connections, let at): return counted(key, connections, at: at)
        case .reaped(let outcome): return reaped(outcome)
        case .tick(let now): return tick(now)
        case .watching(let key, let announced):
            backends[key]?.reaping?.announced = announced
            return []
        case .newFlow(let key, let flow, let at): return newFlow(key, flow, at: at)
        case .announcementsLost(let key, let at):
            guard backends[key]?.reaping != nil else { return [] }
            backends[key]?.reaping?.lastFullPass = nil
            backends[key]?.reaping?.nextPass = at
            return tick(at)
        case .censused(let pool, let connections, let at): return censused(pool, connections, at: at)
        case .conntrackTable(let full):
            conntrackFull = full
            return []
        case .stuckLocalFault(let pool):
            return suppress(pool: pool, backend: nil, .localFault)
        }
    }

    private mutating func newFlow(_ key: BackendKey, _ flow: AnnouncedFlow, at now: Instant) -> [Action] {
        budget.refill(at: now)
        guard let reaping = backends[key]?.reaping, let pool = rules(of: key.pool) else { return [] }
        switch hold(key, pool: pool) {
        case .recovering?: return []
        case .noSurvivor?: return holdForGuard(key)
        case .sharedBackend?: return suppress(key, .sharedBackend)
        case .budget?:
            if reaping.passesOut > 0 { return [] }
            if budget.reserved > 0 {
                // Others' passes hold the bucket, nothing is spent: a walk finds this flow when they come back.
                backends[key]?.reaping?.waiting = true
                return []
            }
            return suppress(key, .budget)
        case nil:
            budget.reserve(1)
            return [.endFlow(key, flow, reason: reaping.reason == .unhealthy ? .unhealthy : .stillDead, episode: reaping.episode)]
        }
    }

    /// What keeps a reaped backend's connections from being ended right now, if anything. Every
    /// path that ends them while it stays reaped (its passes, the flows conntrack announces) asks this.
    private enum Hold {
        /// It answers probes again (rise not reached yet): its new connections are likely good ones.
        case recovering
        /// No other backend of the pool answers now: the all-down guard.
        case noSurvivor
        /// Another pool holding the same backend does not find it dead, or has no survivor itself.
        case sharedBackend
        /// The reconnect-storm budget is spent for now.
        case budget
    }

    /// Whether a reaped backend's connections may still be ended now, asked again when a decided
    /// single-flow end is carried out: in a reconnect storm many wait in line, and the backend may
    /// have answered a probe meanwhile.
    public func stillEnds(_ key: BackendKey, episode: ReapEpisode) -> Bool {
        guard backends[key]?.reaping?.episode == episode, let pool = rules(of: key.pool) else { return false }
        return verdictHold(key, pool: pool) == nil
    }

    /// A stuck scan decided while some backend of the pool answered runs only while one still does:
    /// its clients reconnect there (the guard, asked again when the scan's turn comes; simulation
    /// seed 80,525,658: a lossy backend's failed probe arrived between the decision and the scan).
    public func stillScans(pool name: String) -> Bool {
        rules(of: name).map(someBackendAnswers) ?? false
    }

    /// The stuck scan's guard: a stuck connection's client reconnects, so only where some backend
    /// of the pool answers now.
    func someBackendAnswers(_ pool: PoolRules) -> Bool {
        pool.backends.contains { answersNow(BackendKey(pool: pool.name, backend: $0)) }
    }

    /// Whether a pass decided earlier may still run when its turn comes: a stale one (the backend
    /// answered, a reload removed it, the survivor it counted on stopped answering, or its episode
    /// ended and another began) is dropped.
    public func stillRuns(_ key: BackendKey, reason: ReapReason, episode: ReapEpisode) -> Bool {
        guard reason == .drainTimeout else { return stillEnds(key, episode: episode) }
        guard let record = backends[key], record.state == .unhealthy, record.drain?.episode == episode, let pool = rules(of: key.pool)
        else {
            return false
        }
        return closeHold(key, pool: pool) == nil
    }

    private func hold(_ key: BackendKey, pool: PoolRules) -> Hold? {
        verdictHold(key, pool: pool) ?? (budget.available() > 0 ? nil : .budget)
    }

    /// The holds that come of evidence, not of the budget.
    private func verdictHold(_ key: BackendKey, pool: PoolRules) -> Hold? {
        guard let record = backends[key], record.failingSince != nil, record.reaping?.answered == nil else { return .recovering }
        if !reapWhenAllDown, survivor(besides: key, pool: pool) == nil { return .noSurvivor }
        // One endpoint, one verdict: its sockets are the same whichever pool ends them.
        for (other, otherKey) in otherPools(holding: key, pool: pool) {
            guard let record = backends[otherKey], record.reaping != nil, record.failingSince != nil, record.reaping?.answered == nil,
                reapWhenAllDown || survivor(besides: otherKey, pool: other) != nil
            else { return .sharedBackend }
        }
        return nil
    }

    /// Whether a live backend's connections may be closed (drain_timeout): another backend of the
    /// pool answers now, and every other pool holding it finds it failing too and has a survivor.
    private func closeHold(_ key: BackendKey, pool: PoolRules) -> Hold? {
        if survivor(besides: key, pool: pool) == nil { return .noSurvivor }
        for (other, otherKey) in otherPools(holding: key, pool: pool) {
            guard let state = backends[otherKey]?.state, state == .unhealthy || state == .dead,
                survivor(besides: otherKey, pool: other) != nil
            else { return .sharedBackend }
        }
        return nil
    }

    /// The other pools that hold the same backend and reap the same sockets (their namespaces overlap).
    private func otherPools(holding key: BackendKey, pool: PoolRules) -> [(PoolRules, BackendKey)] {
        pools.filter { $0.name != key.pool && $0.backends.contains(key.backend) && $0.sharesSockets(with: pool) }
            .map { ($0, BackendKey(pool: $0.name, backend: key.backend)) }
    }

    /// Its latest probe succeeded.
    func answersNow(_ key: BackendKey) -> Bool { backends[key].map { $0.lastProbe?.success == true && !$0.proberFault } ?? false }

    private mutating func probed(_ key: BackendKey, _ result: ProbeResult, at: Instant) -> [Action] {
        guard var record = backends[key], let pool = rules(of: key.pool) else { return [] }
        // Probes overlap (regular, early and return probes): a failure of one begun before the last
        // success is older news than that success. Counted, it would make an answering backend fail
        // again and resume its reaping (a SYN lost in an outage times out after the outage ended).
        if !result.success, let lastSuccess = record.lastSuccess, at - result.duration < lastSuccess { return [] }
        // The prober's own trouble says nothing of the backend: no count toward rise or fall.
        if result.failure == .local {
            // Nor does it say the backend answers: it is no survivor until a probe gets through again.
            backends[key]?.proberFault = true
            return suppress(key, .proberFault)
        }
        if record.proberFault {
            // A probe got through: the next fault here is a new episode, logged again.
            record.proberFault = false
            loggedSuppressions.remove(Suppression(pool: key.pool, backend: key.backend, reason: .proberFault))
        }
        var actions: [Action] = []
        let verdict = record.health.record(success: result.success)
        record.lastProbe = result
        record.lastProbeAt = at
        if let failure = result.failure {
            record.lastFailure = failure
            record.lastFailureDetail = result.detail
            if record.failingSince == nil { record.failingSince = at - result.duration }
            record.lastFailureBegan = at - result.duration
            if failure.nothingAnswered {
                record.answerless.append(at)
                if record.answerless.count > pool.fall { record.answerless.removeFirst(record.answerless.count - pool.fall) }
            } else {
                record.answerless = []
            }
            backends[key] = record
            if record.state == .dead, failure == .unhealthy {
                // The probe reached the process: something is there, whatever came before.
                actions += transition(key, to: .unhealthy, at: at)
                actions += suppress(key, .unhealthyNotDead)
            } else if record.health.consecutiveFailures >= pool.fall {
                actions += failing(key, pool: pool, at: at)
            }
        } else {
            record.lastSuccess = at
            record.lastSuccessBegan = at - result.duration
            record.failingSince = nil
            record.answerless = []
            // Recovery wins: nothing more is ended until fresh evidence says dead again.
            if record.reaping != nil, record.reaping?.answered == nil { record.reaping?.answered = at }
            verdictRechecks[key] = nil
            backends[key] = record
            if verdict == .up || (record.state == .unknown && record.health.state == .up) {
                actions += transition(key, to: .up, at: at)
            }
            actions += releaseWaitingPeers(of: key, at: at)
        }
        return actions
    }

    /// `fall` or more failures in a row: unhealthy, or a candidate for dead.
    private mutating func failing(_ key: BackendKey, pool: PoolRules, at: Instant) -> [Action] {
        // A dead backend stays dead; one that answered since needs a verdict again.
        guard let record = backends[key], record.state != .dead || record.reaping?.answered != nil else { return [] }
        guard verdictRechecks[key] == nil else { return [] }
        if conntrackFull {
            var actions = transition(key, to: .unhealthy, at: at)
            actions += suppress(key, .conntrackFull)
            return actions
        }
        let nothingAnswered = record.answerless.count >= pool.fall
        if pool.reapOn == .unhealthy {
            // The behaviour from before states: failed probes alone reap.
            return transition(key, to: nothingAnswered ? .dead : .unhealthy, at: at)
        }
        guard nothingAnswered else {
            var actions = transition(key, to: .unhealthy, at: at)
            actions += suppress(key, .unhealthyNotDead)
            return actions
        }
        guard pool.segmentEvidence else { return dead(key, pool: pool, lastLife: nil, at: at) }
        guard !record.evidencePending, let since = record.answerless.first else { return [] }
        backends[key]?.evidencePending = true
        return [.needEvidence(key, since: since)]
    }

    private mutating func evidenceArrived(_ key: BackendKey, _ evidence: SegmentEvidence) -> [Action] {
        guard var record = backends[key], let pool = rules(of: key.pool) else { return [] }
        record.evidencePending = false
        backends[key] = record
        if record.state == .dead, let reaping = record.reaping, reaping.answered == nil, let looked = reaping.lookedAt {
            return lookedAgain(key, pool: pool, evidence, since: looked)
        }
        // A probe may have succeeded, or reached the process, while the dump ran.
        guard record.state != .dead || record.reaping?.answered != nil, record.health.consecutiveFailures >= pool.fall,
            record.answerless.count >= pool.fall, let since = record.answerless.first
        else { return [] }
        if conntrackFull {
            var actions = transition(key, to: .unhealthy, at: evidence.at)
            actions += suppress(key, .conntrackFull)
            return actions
        }
        // A segment within a probe interval is life even when early probes made the window short.
        if evidence.showsLife(after: since, recentEnough: min(pool.probeInterval, SegmentEvidence.recentEnoughCap)) {
            var actions = transition(key, to: .unhealthy, at: evidence.at)
            actions += suppress(key, .aliveEvidence)
            return actions
        }
        guard evidence.complete else { return suppress(key, .evidenceMissing) }
        return dead(key, pool: pool, lastLife: evidence.lastSegment, at: evidence.at)
    }

    /// A dead backend's connections looked at again before a pass that ends established ones.
    private mutating func lookedAgain(_ key: BackendKey, pool: PoolRules, _ evidence: SegmentEvidence, since looked: Instant) -> [Action] {
        if evidence.showsLife(after: looked) {
            // Recovery wins: what the last look found silent carries segments again.
            var actions = transition(key, to: .unhealthy, at: evidence.at)
            actions += suppress(key, .aliveEvidence)
            return actions
        }
        // An incomplete look holds nothing back here: the verdict was made on a complete one, and a
        // pass reaches only the namespaces a look can read (a named one gone, say, is skipped by both).
        backends[key]?.reaping?.lookedAt = evidence.at
        if let next = backends[key]?.reaping?.nextPass, next > evidence.at { backends[key]?.reaping?.nextPass = evidence.at }
        return reapPass(key, pool: pool, now: evidence.at)
    }

    /// Nothing answers and nothing shows life: dead, once the silence since its last sign of life
    /// (a segment on its connections, an answered probe, else its first failed probe) reaches the
    /// pool's outage floor. A shorter one is looked at again when the floor is reached.
    private mutating func dead(_ key: BackendKey, pool: PoolRules, lastLife segment: Instant?, at now: Instant) -> [Action] {
        guard let record = backends[key] else { return [] }
        let signs = [segment, record.lastSuccess].compactMap { $0 }
        if let lastLife = signs.max() ?? record.failingSince, now - lastLife < pool.outageFloor {
            verdictRechecks[key] = lastLife + pool.outageFloor
            return suppress(key, .shortOutage)
        }
        verdictRechecks[key] = nil
        if record.state == .dead {
            // It answered, then fell silent again: the reaping resumes with a full pass, since
            // connections made while it answered are established ones no SYN_SENT walk finds.
            let episode = nextEpisode()
            backends[key]?.reaping?.answered = nil
            backends[key]?.reaping?.episode = episode
            backends[key]?.reaping?.lastFullPass = nil
            backends[key]?.reaping?.verdictFailureBegan = record.lastFailureBegan
            backends[key]?.reaping?.probedPeers = false
            backends[key]?.reaping?.nextPass = now
            if pool.segmentEvidence { backends[key]?.reaping?.lookedAt = now }
            return reapPass(key, pool: pool, now: now)
        }
        return transition(key, to: .dead, at: now)
    }

    private mutating func counted(_ key: BackendKey, _ connections: Int, at: Instant) -> [Action] {
        guard var record = backends[key], record.state == .unhealthy, record.drain != nil else { return [] }
        record.drain?.counting = false
        record.drain?.perSecond = max(1, (connections + Self.pacedShare - 1) / Self.pacedShare)
        // Counted again after a pass that left nothing: the pace holds across the count (a second
        // from the last close), so a late arrival is not closed a few ms after the one before.
        let paceFrom = record.drain?.nextPass ?? at
        record.drain?.nextPass = max(at, paceFrom)
        backends[key] = record
        return tick(at)
    }

    private mutating func reaped(_ outcome: ReapOutcome) -> [Action] {
        budget.refill(at: outcome.at)
        // Reserved when decided; what the pass did not end goes back (more than granted: debt, which
        // a flush of forwarded flows, not limited like sockets, may leave).
        budget.settle(granted: outcome.granted, ended: outcome.flowsEnded)
        if outcome.reason == .rebalance {
            rebalanceClosed(outcome)
            return []
        }
        var dueAgain: BackendKey?
        if let backend = outcome.backend, [.dead, .stillDead, .unhealthy].contains(outcome.reason) {
            let key = BackendKey(pool: outcome.pool, backend: backend)
            // A pass of a reaping that ended (the backend came up, then was found dead anew) is not
            // one of this reaping's passes out, and what it left says nothing of this one's work.
            guard let reaping = backends[key]?.reaping, outcome.episode.map({ $0 >= reaping.began }) ?? true else {
                return resumeWaiting(first: nil, at: outcome.at)
            }
            if outcome.scope != nil, case let out = reaping.passesOut, out > 0 {
                backends[key]?.reaping?.passesOut = out - 1
                if out == 1, backends[key]?.reaping?.waiting == true {
                    // A pass came due while this one ran: it runs now.
                    backends[key]?.reaping?.waiting = false
                    backends[key]?.reaping?.nextPass = outcome.at
                    dueAgain = key
                }
            }
            guard outcome.ran else { return resumeWaiting(first: dueAgain, at: outcome.at) }
            // Only a full pass that left nothing says none is left: a SYN_SENT walk queued behind
            // the first reap looks at connecting sockets only.
            if outcome.leftByLimit > 0 {
                backends[key]?.reaping?.unfinished = true
            } else if outcome.scope == .full {
                backends[key]?.reaping?.unfinished = false
            }
            // A pass set the next one by the cadence it had before it knew some were left behind.
            if outcome.leftByLimit > 0, let next = backends[key]?.reaping?.nextPass, next > outcome.at + Self.deadCadence {
                backends[key]?.reaping?.nextPass = outcome.at + Self.deadCadence
            }
        }
        var actions: [Action] = []
        if outcome.leftByLimit > 0, outcome.reason != .drainTimeout {
            actions += suppress(pool: outcome.pool, backend: outcome.backend, .budget)
        } else if outcome.leftByLimit == 0 {
            loggedSuppressions.remove(Suppression(pool: outcome.pool, backend: outcome.backend, reason: .budget))
        }
        if let backend = outcome.backend, outcome.reason == .drainTimeout,
            case let key = BackendKey(pool: outcome.pool, backend: backend),
            outcome.episode == nil || backends[key]?.drain?.episode == outcome.episode
        {
            backends[key]?.drain?.passOut = false
            if outcome.leftByLimit == 0 {
                // Nothing left beyond this pass: count again next time, so late arrivals get their own pace.
                backends[key]?.drain?.perSecond = nil
            } else if let drain = backends[key]?.drain, drain.nextPass <= outcome.at, let pool = rules(of: key.pool) {
                // The next came due while this one ran: it runs now.
                actions += drainPass(key, pool: pool, now: outcome.at)
            }
        }
        return actions + resumeWaiting(first: dueAgain, at: outcome.at)
    }

    /// Passes that waited for a pass out (their own backend's, or others' holding the budget) run
    /// once it came back, the backend whose pass returned first.
    private mutating func resumeWaiting(first: BackendKey?, at now: Instant) -> [Action] {
        var actions: [Action] = []
        if let key = first, let pool = rules(of: key.pool) { actions += reapPass(key, pool: pool, now: now) }
        for key in attended.sorted(by: { $0.description < $1.description }) where key != first {
            guard let reaping = backends[key]?.reaping, reaping.waiting, reaping.passesOut == 0, let pool = rules(of: key.pool) else {
                continue
            }
            backends[key]?.reaping?.waiting = false
            backends[key]?.reaping?.nextPass = min(reaping.nextPass, now)
            actions += reapPass(key, pool: pool, now: now)
        }
        return actions
    }

    // MARK: - Time

    private mutating func tick(_ now: Instant) -> [Action] {
        budget.refill(at: now)
        var actions: [Action] = []
        for (key, due) in verdictRechecks.sorted(by: { $0.key.description < $1.key.description }) where due <= now {
            verdictRechecks[key] = nil
            guard let record = backends[key], let pool = rules(of: key.pool), record.failingSince != nil,
                record.health.consecutiveFailures >= pool.fall
            else { continue }
            actions += failing(key, pool: pool, at: now)
        }
        for pool in pools {
            for backend in pool.backends {
                let key = BackendKey(pool: pool.name, backend: backend)
                guard let record = backends[key] else { continue }
                if record.reaping != nil {
                    actions += reapPass(key, pool: pool, now: now)
                } else if record.drain != nil {
                    actions += drainPass(key, pool: pool, now: now)
                }
            }
            if let every = pool.stuckScanEvery, let due = nextStuckScan[pool.name], now >= due {
                nextStuckScan[pool.name] = now + every
                let limit = min(budget.available(), stuckScanShare)
                if !someBackendAnswers(pool) {
                    actions += suppress(pool: pool.name, backend: nil, .allBackendsDown)
                } else if limit > 0 {
                    budget.reserve(limit)
                    actions.append(.scanStuck(pool: pool.name, limit: limit))
                } else {
                    // Tried again soon, not a whole period later: pools with the same stuck_after come
                    // due at the same tick, and one that found the bucket empty there would find it so
                    // at every period (simulation seed 130,383,060).
                    nextStuckScan[pool.name] = now + every / 4
                    actions += suppress(pool: pool.name, backend: nil, .budget)
                }
            }
            actions += rebalanceTick(pool, now: now)
        }
        return actions
    }

    /// What one stuck scan may hold of the bucket. A scan mostly ends nothing, and it holds its limit
    /// until it comes back, so it takes no more than a second's refill and no more than its pool's
    /// share of the burst: a dead backend's pass is never kept waiting for the whole bucket, nor is
    /// another pool's scan due at the same tick (simulation seed 130,383,060: at a burst of 20, the
    /// first pool's scans took all of it at every tick, the second's never ran, and what it last held
    /// through a lifted fault kept the first from ending a blackholed connection for good). What a
    /// scan leaves, the next takes, a quarter of stuck_after later.
    var stuckScanShare: Int {
        let scanning = max(1, nextStuckScan.count)
        return min(budget.perSecond, max(1, budget.burst / scanning))
    }

    /// The earliest instant a tick has something to do; nil when nothing is scheduled.
    public var nextDeadline: Instant? {
        var deadlines: [Instant] = Array(nextStuckScan.values) + rebalanceDeadlines + Array(verdictRechecks.values)
        for key in attended {
            guard let record = backends[key] else { continue }
            if let reaping = record.reaping {
                deadlines.append(reaping.awaitingSurvivorUntil ?? min(reaping.nextPass, reaping.followUps.first ?? reaping.nextPass))
            }
            if let drain = record.drain, !drain.counting, !drain.passOut {
                deadlines.append(drain.perSecond == nil ? drain.startsAt : drain.nextPass)
            }
        }
        return deadlines.min()
    }

    private mutating func reapPass(_ key: BackendKey, pool: PoolRules, now: Instant) -> [Action] {
        guard var reaping = backends[key]?.reaping else { return [] }
        budget.refill(at: now)
        if let until = reaping.awaitingSurvivorUntil {
            guard now >= until else { return [] }
            reaping.awaitingSurvivorUntil = nil
        }
        let due = min(reaping.nextPass, reaping.followUps.first ?? reaping.nextPass)
        guard now >= due else { return [] }
        reaping.followUps.removeAll { $0 <= now }
        if reaping.nextPass <= now {
            // Start to start; a pass that came late sets the rhythm from now.
            let early = now - reaping.since < Self.firstMinute
            // Sockets the budget left behind are established ones: no announcement or SYN_SENT walk
            // finds them, so full passes come at the dead cadence until none is left.
            let cadence =
                reaping.announced && !reaping.unfinished
                ? (early ? Self.announcedCadence : Self.announcedCadenceLater) : (early ? Self.deadCadence : Self.deadCadenceLater)
            reaping.nextPass = reaping.nextPass + cadence > now ? reaping.nextPass + cadence : now + cadence
        }
        backends[key]?.reaping = reaping
        switch hold(key, pool: pool) {
        case .recovering?:
            return []
        case .noSurvivor?:
            // A verdict asks the peers once (a real survivor then costs one fast probe, not an interval).
            if !reaping.probedPeers, pool.backends.count > 1 {
                backends[key]?.reaping?.probedPeers = true
                backends[key]?.reaping?.awaitingSurvivorUntil = now + pool.probeTimeout + Self.survivorGrace
                return [.probeNow(pool: key.pool, backends: pool.backends.filter { $0 != key.backend })]
            }
            return holdForGuard(key)
        case .sharedBackend?:
            return suppress(key, .sharedBackend)
        case .budget?, nil:
            break
        }
        var actions: [Action] = []
        if guarded.remove(key.pool) != nil { actions.append(.guardReleased(pool: key.pool)) }
        // Never a second pass while one is out: passes slower than the cadence would pile up behind
        // it and run late, after the backend answered, all their budget taken at once. It runs when
        // the one out comes back.
        if reaping.passesOut > 0 {
            backends[key]?.reaping?.waiting = true
            return actions
        }
        let fullEvery = reaping.announced ? Self.fullPassEveryAnnounced : Self.fullPassEvery
        let full = reaping.passes == 0 || reaping.unfinished || reaping.lastFullPass.map { now - $0 >= fullEvery } ?? true
        if full, reaping.reason == .dead, let looked = reaping.lookedAt, now - looked > Self.evidenceFreshness {
            // It ends established connections: ones that carried a segment since the last look
            // found them silent say the backend lives (it came back, or a prober-side fault made it
            // look dead), so a pass decided later than that look looks again first.
            if backends[key]?.evidencePending == false {
                backends[key]?.evidencePending = true
                actions.append(.needEvidence(key, since: looked))
            }
            return actions
        }
        // A full pass may take the whole bucket; a walk for new connects ends the few still
        // connecting, so it holds no more than a second's refill and other backends' passes run beside it.
        let limit = full ? budget.available() : min(budget.available(), budget.perSecond)
        if budget.reserved > Double(limit) {
            // Other passes out hold more than this one would get: it runs when they come back,
            // not short now with the rest left for a pass a cadence later.
            backends[key]?.reaping?.waiting = true
            return actions
        }
        guard limit > 0 else {
            if full {
                // Everything is left for later, established connections included: the next pass is
                // a full one when the bucket holds a token again, not an announced cadence (5 s) later.
                backends[key]?.reaping?.unfinished = true
                backends[key]?.reaping?.nextPass = now + max(Self.deadCadence, budget.timeUntilAvailable(1))
            }
            return actions + suppress(key, .budget)
        }
        budget.reserve(limit)
        backends[key]?.reaping?.passesOut += 1
        let reason: ReapReason = reaping.reason == .unhealthy ? .unhealthy : (reaping.passes == 0 ? .dead : .stillDead)
        backends[key]?.reaping?.passes += 1
        if full { backends[key]?.reaping?.lastFullPass = now }
        actions.append(.reap(key, reason: reason, limit: limit, scope: full ? .full : .newConnects, episode: reaping.episode))
        return actions
    }

    private mutating func holdForGuard(_ key: BackendKey) -> [Action] {
        let first = guarded.insert(key.pool).inserted
        return [.suppressed(pool: key.pool, backend: key.backend, reason: .allBackendsDown, log: first)]
    }

    private mutating func drainPass(_ key: BackendKey, pool: PoolRules, now: Instant) -> [Action] {
        guard var drain = backends[key]?.drain, !drain.counting else { return [] }
        guard now >= drain.startsAt else { return [] }
        budget.refill(at: now)
        switch closeHold(key, pool: pool) {
        case .noSurvivor?:
            // The sole survivor is never drained, whatever its probes say: its clients would come straight back.
            (drain.startsAt, drain.nextPass) = (now + .seconds(1), now + .seconds(1))
            backends[key]?.drain = drain
            return holdForGuard(key)
        case .sharedBackend?:
            (drain.startsAt, drain.nextPass) = (now + .seconds(1), now + .seconds(1))
            backends[key]?.drain = drain
            return suppress(key, .sharedBackend)
        default:
            break
        }
        guard let perSecond = drain.perSecond else {
            drain.counting = true
            backends[key]?.drain = drain
            return [.countConnections(key)]
        }
        // Never a second pass while one is out, as for a dead backend's: a pass slower than the pace
        // (`netns: all`, a large table) would have the next ones pile up behind it, each holding its
        // budget, and run after the backend answered. It runs when the one out comes back.
        guard now >= drain.nextPass, !drain.passOut else { return [] }
        drain.nextPass = now + .seconds(1)
        backends[key]?.drain = drain
        let limit = min(perSecond, budget.available())
        guard limit > 0 else { return suppress(key, .budget) }
        budget.reserve(limit)
        backends[key]?.drain?.passOut = true
        return [.reap(key, reason: .drainTimeout, limit: limit, scope: .established, episode: drain.episode)]
    }

    // MARK: - Rules shared by the paths

    /// Another backend of the pool answers now: its latest probe succeeded, and began after the
    /// last failed probe that made this one dead (for a failing one not dead: after it began
    /// failing). Then the fault is the backend's, not the prober's or the network's, and clients
    /// have somewhere to go. An answer from before this one's last failure is not enough: a
    /// prober-side fault that reaches the backends a few hundred ms apart leaves each looking like
    /// the other's survivor until their next probes fail too; a dead verdict's first pass asks the
    /// peers at once instead (one RTT when they live).
    func survivor(besides key: BackendKey, pool: PoolRules) -> Endpoint? {
        let since = backends[key].flatMap { $0.reaping?.verdictFailureBegan ?? $0.failingSince ?? $0.stateSince }
        return pool.backends.first { other in
            let otherKey = BackendKey(pool: key.pool, backend: other)
            return other != key.backend && answersNow(otherKey)
                && (since.map { backends[otherKey]?.lastSuccessBegan ?? $0 > $0 } ?? true)
        }
    }

    /// A success may be the survivor a dead backend's first reap waits for (or the guard holds
    /// for): run it now rather than at its next pass.
    private mutating func releaseWaitingPeers(of key: BackendKey, at now: Instant) -> [Action] {
        guard let pool = rules(of: key.pool) else { return [] }
        let attendedPeers = attended.filter { $0.pool == key.pool && $0 != key }
        guard !attendedPeers.isEmpty else { return [] }
        var actions: [Action] = []
        // In the pool's order, so the actions come out the same way every run.
        for other in pool.backends where attendedPeers.contains(BackendKey(pool: key.pool, backend: other)) {
            let otherKey = BackendKey(pool: key.pool, backend: other)
            guard let reaping = backends[otherKey]?.reaping,
                reaping.awaitingSurvivorUntil != nil || (guarded.contains(key.pool) && reaping.passes == 0)
            else { continue }
            if reaping.passes == 0, reaping.awaitingSurvivorUntil == nil, now - reaping.since > pool.probeInterval {
                // The guard held its first pass longer than a probe interval: its verdict was made
                // while nothing else answered, the prober's fault as likely as its own. It is made
                // again (its own next failed probe and a new look; an answer keeps it) before
                // anything of it is ended: idle connections show no life for a look to find.
                backends[otherKey]?.reaping?.answered = now
                if guarded.remove(key.pool) != nil { actions.append(.guardReleased(pool: key.pool)) }
                continue
            }
            backends[otherKey]?.reaping?.awaitingSurvivorUntil = nil
            backends[otherKey]?.reaping?.nextPass = now
            actions += reapPass(otherKey, pool: pool, now: now)
        }
        return actions
    }

    private mutating func suppress(_ key: BackendKey, _ reason: SuppressReason) -> [Action] {
        suppress(pool: key.pool, backend: key.backend, reason)
    }

    /// Counted every time; logged once per episode (until the backend is up again, or for the
    /// budget, until a pass is no longer cut short).
    mutating func suppress(pool: String, backend: Endpoint?, _ reason: SuppressReason) -> [Action] {
        let first = loggedSuppressions.insert(Suppression(pool: pool, backend: backend, reason: reason)).inserted
        return [.suppressed(pool: pool, backend: backend, reason: reason, log: first)]
    }

    private mutating func transition(_ key: BackendKey, to next: BackendState, at now: Instant) -> [Action] {
        guard var record = backends[key], let pool = rules(of: key.pool), record.state != next else { return [] }
        let previous = record.state
        let wasReaping = record.reaping != nil
        record.state = next
        record.stateSince = now
        record.drain = nil
        record.evidencePending = false
        verdictRechecks[key] = nil
        switch next {
        case .up, .unknown:
            record.reaping = nil
            loggedSuppressions = loggedSuppressions.filter { $0.pool != key.pool || $0.backend != key.backend }
        case .unhealthy:
            if pool.reapOn == .unhealthy {
                record.reaping = record.reaping ?? Reaping(reason: .unhealthy, since: now, episode: nextEpisode())
            } else {
                record.reaping = nil
                if pool.drainTimeout > .zero { record.drain = Drain(startsAt: now + pool.drainTimeout, episode: nextEpisode()) }
            }
        case .dead:
            let announced = record.reaping?.announced ?? false  // `reap_on: unhealthy` may have watched already
            record.reaping = Reaping(reason: .dead, since: now, episode: nextEpisode())
            record.reaping?.announced = announced
            record.reaping?.verdictFailureBegan = record.lastFailureBegan
            // Made dead by a look at its connections (`dead` runs at the evidence's instant).
            if pool.segmentEvidence, pool.reapOn == .dead { record.reaping?.lookedAt = now }
        }
        backends[key] = record
        if record.reaping != nil || record.drain != nil { attended.insert(key) } else { attended.remove(key) }
        var actions: [Action] = [
            .changed(
                key, from: previous, to: next, failure: next == .up ? nil : record.lastFailure,
                detail: record.lastProbe?.detail ?? "")
        ]
        if next == .up { rebalanceArm(key, from: previous, at: now) } else if previous == .up { actions += rebalanceInterrupt(key) }
        if record.reaping != nil { actions += reapPass(key, pool: pool, now: now) }
        if record.reaping != nil, !wasReaping { actions.append(.watchNewFlows(key)) }
        if record.reaping == nil, wasReaping { actions.append(.unwatchNewFlows(key)) }
        return actions
    }
}

/// Everything the policy knows of one backend.
public struct BackendRecord: Sendable {
    public var health: BackendHealth
    public var state: BackendState = .unknown
    public var stateSince: ContinuousClock.Instant?
    public var lastProbe: ProbeResult?
    public var lastProbeAt: ContinuousClock.Instant?
    public var lastFailure: ProbeFailure?
    public var lastFailureDetail: String?
    /// When the current run of failed probes began (the first one's send time); nil after a success.
    public var failingSince: ContinuousClock.Instant?
    public var lastSuccess: ContinuousClock.Instant?
    /// When the latest successful probe was sent (a survivor's answer must be newer than the dead one's failure).
    public var lastSuccessBegan: ContinuousClock.Instant?
    /// When the latest failed probe that counted was sent.
    public var lastFailureBegan: ContinuousClock.Instant?
    /// When each of the last `fall` failures ended, while they all found nothing answering.
    public var answerless: [ContinuousClock.Instant] = []
    var evidencePending = false
    /// Its latest probe failed on this host (`ProbeFailure.local`): nothing is known of it now.
    var proberFault = false
    /// When it came back up from dead or unhealthy lately: each return doubles its rebalancing hold-down.
    var returns: [ContinuousClock.Instant] = []
    var reaping: Reaping?
    var drain: Drain?

    public init(health: BackendHealth) {
        self.health = health
    }
}

/// A backend being kept reaped: dead, or failing under `reap_on: unhealthy`.
struct Reaping: Sendable {
    var reason: ReapReason
    var since: ContinuousClock.Instant
    var passes = 0
    var followUps: [ContinuousClock.Instant] = []
    var nextPass: ContinuousClock.Instant
    var lastFullPass: ContinuousClock.Instant?
    var probedPeers = false
    var awaitingSurvivorUntil: ContinuousClock.Instant?
    /// Conntrack announces its new flows in every namespace the pool reaps.
    var announced = false
    /// The last pass left sockets for later (the reconnect-storm budget): the next ones are full passes.
    var unfinished = false
    /// It answered a probe since it was found dead: nothing is ended until a new verdict.
    var answered: ContinuousClock.Instant?
    /// When the last failed probe of its verdict was sent: a survivor answered a probe sent after it.
    var verdictFailureBegan: ContinuousClock.Instant?
    /// When its connections were last looked at and found silent; a full pass decided later looks again.
    var lookedAt: ContinuousClock.Instant?
    /// Its passes decided and not yet come back (at most one).
    var passesOut = 0
    /// A pass came due while one was out (its own, or others' holding the budget).
    var waiting = false

    /// Begun at the verdict; a new one when it resumes after an answer.
    var episode: ReapEpisode
    /// Its first episode: every later one of its own is newer, every one of an earlier reaping older.
    let began: ReapEpisode

    init(reason: ReapReason, since: ContinuousClock.Instant, episode: ReapEpisode) {
        self.reason = reason
        self.since = since
        self.episode = episode
        self.began = episode
        self.nextPass = since
        self.followUps = ReapPolicy.followUps.map { since + $0 }
    }
}

/// An unhealthy backend's connections, waiting for `drain_timeout`, then closed paced.
struct Drain: Sendable {
    var startsAt: ContinuousClock.Instant
    var perSecond: Int?
    var counting = false
    var nextPass: ContinuousClock.Instant
    /// A pass is out: the next waits for it (never two at once; see `reapPass`).
    var passOut = false
    let episode: ReapEpisode

    init(startsAt: ContinuousClock.Instant, episode: ReapEpisode) {
        self.startsAt = startsAt
        self.episode = episode
        self.nextPass = startsAt
    }
}
