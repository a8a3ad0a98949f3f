import NetworkAddress

/// Paced rebalancing (pool option `rebalance`): after a backend returns, its fair share of the
/// long-lived connections is moved back to it, one close at a time. A balancer only places new
/// connections (nginx's least_conn), so a connection ended on an over-share backend reconnects to the
/// emptiest one, the returned one.
///
/// The rules, and why:
/// - Nothing moves until every backend of the pool has been `up` for its hold-down (10 s, doubled for
///   each further return within 10 minutes, at most 5 minutes): a backend that flaps never stays up
///   long enough to pull connections it would then drop again, and a crash loop waits longer each time.
/// - An episode starts only after a backend came up (armed), and only when the spread is outside the
///   tolerance; it ends when every backend is within it, when a backend leaves `up`, or when too many
///   closes did not bring the under-share backends a connection (a balancer that puts reconnects
///   back where they were, a hash or sticky sessions, must not be churned forever). Some misses are
///   normal: nginx's workers each keep their own least_conn counts, so a reconnect accepted by a
///   worker whose own view is even may land anywhere.
/// - Each close follows a fresh census and takes from the backend with the largest excess now (ties
///   at random), never more than that excess (a backend is never taken below its fair share), never
///   a connection that carries data, the quietest first; at most 1% of the pool's connections a
///   second, with jitter, and only with a token of the node's budget.
/// - Each node acts on the connections it sees: nothing is coordinated, so the cluster-wide rate is
///   the per-node rate times the nodes; each episode's first close falls at random within the first
///   interval, so nodes that saw the same return do not close in step.
extension ReapPolicy {
    /// What a rebalancing episode did, for the log.
    public enum RebalanceNews: Sendable, Equatable {
        /// `scope`: whose connections it counts and moves; `leftAlone`: how many others' it leaves.
        case started(counts: [Endpoint: Int], fairShare: Double, scope: RebalanceScope, leftAlone: Int)
        case balanced(counts: [Endpoint: Int])
        /// Too many closes brought the under-share backends nothing: the balancer does not place
        /// reconnects on the emptiest backend.
        case gaveUp(counts: [Endpoint: Int], closed: Int, moved: Int)
        /// A backend left `up` mid-episode.
        case interrupted(backend: Endpoint, closed: Int)
    }

    /// One pool's rebalancing, between events.
    struct PoolRebalance: Sendable {
        /// A backend came up since the last episode: look once the pool has settled.
        var armed = false
        var episode: Episode?
        /// A census or a close is out: one step at a time.
        var inFlight = false
        var nextStep: Instant?
        var nextCloseAllowed: Instant?
    }

    struct Episode: Sendable {
        /// The backends under their fair share when it began, and what they held then: what they
        /// gained since is what the closes achieved.
        var receivers: [Endpoint]
        var receiversHeld: Int
        /// Closes that may bring the receivers nothing before the episode gives up: twice the excess
        /// it found (at least 3), so a balancer that pins clients costs at most two more rounds of
        /// closes than a perfect one needs. (nginx with two workers and no shared zone lost half to
        /// two thirds of its moves in the kernel test: each worker places by its own counts.)
        var missAllowance: Int
        /// Whose connections it counts and ends: chosen at its start, kept to its end.
        var scope: RebalanceScope
        var closed: [Endpoint: Int] = [:]
        var totalClosed: Int { closed.values.reduce(0, +) }

        init(_ plan: RebalancePlan, scope: RebalanceScope) {
            self.scope = scope
            receivers = plan.counts.keys.filter { Double(plan.counts[$0, default: 0]) < plan.fairShare }
            receiversHeld = receivers.reduce(0) { $0 + plan.counts[$1, default: 0] }
            missAllowance = max(3, 2 * plan.overShare.reduce(0) { $0 + plan.excess(of: $1) })
        }

        func moved(_ plan: RebalancePlan) -> Int {
            max(0, receivers.reduce(0) { $0 + plan.counts[$1, default: 0] } - receiversHeld)
        }

        func misses(_ plan: RebalancePlan) -> Int { max(0, totalClosed - moved(plan)) }
    }

    /// When every backend of the pool has been up for its hold-down; nil while one is not up.
    func settledAt(_ pool: PoolRules, settings: RebalanceSettings) -> Instant? {
        var latest: Instant?
        for backend in pool.backends {
            guard let record = backends[BackendKey(pool: pool.name, backend: backend)], record.state == .up,
                let since = record.stateSince
            else { return nil }
            let settled = since + settings.holdDown(afterReturns: record.returns.count)
            latest = max(latest ?? settled, settled)
        }
        return latest
    }

    mutating func rebalanceTick(_ pool: PoolRules, now: Instant) -> [Action] {
        guard pool.rebalance != nil, var state = rebalancing[pool.name], !state.inFlight, let due = state.nextStep, now >= due else {
            return []
        }
        state.inFlight = true
        state.nextStep = nil
        rebalancing[pool.name] = state
        return [.census(pool: pool.name)]
    }

    /// A backend of a rebalancing pool came up: once the pool settles, look at the spread.
    mutating func rebalanceArm(_ key: BackendKey, from previous: BackendState, at now: Instant) {
        guard let pool = rules(of: key.pool), let settings = pool.rebalance, var state = rebalancing[key.pool] else { return }
        if previous == .dead || previous == .unhealthy, var record = backends[key] {
            record.returns = record.returns.filter { now - $0 < settings.flapWindow } + [now]
            backends[key] = record
        }
        state.armed = true
        let look = settledAt(pool, settings: settings) ?? now + settings.holdDown
        if !state.inFlight { state.nextStep = min(state.nextStep ?? look, look) }
        rebalancing[key.pool] = state
    }

    /// A backend left `up`: an episode in progress stops at once.
    mutating func rebalanceInterrupt(_ key: BackendKey) -> [Action] {
        guard let episode = rebalancing[key.pool]?.episode else { return [] }
        rebalancing[key.pool]?.episode = nil
        rebalancing[key.pool]?.armed = false
        return [.rebalanceNews(pool: key.pool, .interrupted(backend: key.backend, closed: episode.totalClosed))]
    }

    mutating func censused(_ name: String, _ connections: [ConnectionSample], at now: Instant) -> [Action] {
        guard let pool = rules(of: name), let settings = pool.rebalance, var state = rebalancing[name] else { return [] }
        budget.refill(at: now)
        state.inFlight = false
        defer { rebalancing[name] = state }
        guard let settled = settledAt(pool, settings: settings), now >= settled else {
            // Not every backend is up, or one came up lately: nothing moves yet (a flapping one never gets here).
            state.nextStep = settledAt(pool, settings: settings).map { min($0, now + settings.censusEvery) } ?? now + settings.censusEvery
            return []
        }
        // Only the balancer's connections are counted and moved (`rebalance_owner`): a local client
        // that talks to one backend directly is neither skew to fix nor a connection to end.
        let scope = state.episode?.scope ?? RebalanceScope(settings.owner, connections: connections)
        let scoped = connections.filter(scope.holds)
        let plan = RebalancePlan(backends: pool.backends, connections: scoped, tolerancePercent: settings.tolerancePercent)
        var actions: [Action] = []
        if state.episode == nil {
            guard state.armed, !plan.withinTolerance else {
                state.armed = false
                state.nextStep = now + settings.censusEvery
                return []
            }
            state.armed = false
            state.episode = Episode(plan, scope: scope)
            // The first close falls anywhere in the first interval: nodes that saw the same backend
            // return at the same moment do not all close at once when their hold-downs end.
            let perSecond = RebalancePlan.closesPerSecond(connections: plan.total, settings: settings)
            state.nextCloseAllowed = now + .seconds(Double.random(in: 0..<1, using: &random) / perSecond)
            actions.append(
                .rebalanceNews(
                    pool: name,
                    .started(counts: plan.counts, fairShare: plan.fairShare, scope: scope, leftAlone: connections.count - scoped.count)))
        }
        guard var episode = state.episode else { return actions }
        if plan.withinTolerance {
            state.episode = nil
            state.nextStep = now + settings.censusEvery
            return actions + [.rebalanceNews(pool: name, .balanced(counts: plan.counts))]
        }
        let donors = plan.overShare
        guard !donors.isEmpty, episode.misses(plan) <= episode.missAllowance else {
            state.episode = nil
            state.nextStep = now + settings.censusEvery
            return actions + [
                .rebalanceNews(pool: name, .gaveUp(counts: plan.counts, closed: episode.totalClosed, moved: episode.moved(plan)))
            ]
        }
        if let allowed = state.nextCloseAllowed, now < allowed {
            state.nextStep = allowed
            return actions
        }
        let retry = now + .seconds(1)
        // Every backend answers now: a probe failed since the census is a reason to wait.
        guard pool.backends.allSatisfy({ answersNow(BackendKey(pool: name, backend: $0)) }) else {
            state.nextStep = retry
            return actions
        }
        guard budget.available() > 0 else {
            state.nextStep = retry
            return actions + suppress(pool: name, backend: nil, .budget)
        }
        // The largest excess first, ties at random; a backend whose every connection carries data now is passed over.
        let ordered = donors.map { ($0, plan.excess(of: $0), UInt64.random(in: .min ... .max, using: &random)) }
            .sorted { ($0.1, $0.2) > ($1.1, $1.2) }.map(\.0)
        for backend in ordered {
            guard let chosen = RebalancePlan.choose(on: backend, from: scoped, random: &random) else { continue }
            episode.closed[backend, default: 0] += 1
            state.episode = episode
            let perSecond = RebalancePlan.closesPerSecond(connections: plan.total, settings: settings)
            state.nextCloseAllowed = now + jitteredInterval(perSecond: perSecond)
            state.inFlight = true
            budget.reserve(1)
            return actions + [.rebalance(BackendKey(pool: name, backend: backend), chosen)]
        }
        state.nextStep = retry
        return actions
    }

    /// A close came back (ended or not: a connection that began carrying data is left alone).
    mutating func rebalanceClosed(_ outcome: ReapOutcome) {
        guard var state = rebalancing[outcome.pool] else { return }
        state.inFlight = false
        if outcome.ended == 0, let backend = outcome.backend, let closed = state.episode?.closed[backend], closed > 0 {
            state.episode?.closed[backend] = closed - 1
        }
        state.nextStep = max(state.nextCloseAllowed ?? outcome.at, outcome.at)
        rebalancing[outcome.pool] = state
    }

    /// The mean interval for the rate, 25% either way at random: closes from many nodes do not fall
    /// into step, and up to 2 a second on average (pools of up to 200 connections) never more than 3
    /// come within one second.
    mutating func jitteredInterval(perSecond: Double) -> Duration {
        let mean = 1 / perSecond
        return .seconds(mean * Double.random(in: 0.75...1.25, using: &random))
    }

    /// Pools that rebalance keep their state across a reload; others have none. A pool that starts
    /// rebalancing (at start, or turned on by a reload) looks once a hold-down later: an imbalance
    /// left from before the agent ran is a return it did not see.
    func carriedRebalancing(for pools: [PoolRules], at now: Instant) -> [String: PoolRebalance] {
        var next: [String: PoolRebalance] = [:]
        for pool in pools {
            guard let settings = pool.rebalance else { continue }
            next[pool.name] = rebalancing[pool.name] ?? PoolRebalance(armed: true, nextStep: now + settings.holdDown)
        }
        return next
    }

    var rebalanceDeadlines: [Instant] {
        rebalancing.values.compactMap { $0.inFlight ? nil : $0.nextStep }
    }
}
