import Agent
import NetworkAddress
import Reaper
import SockDiag

/// What the kernel would show of a connection to the stuck detector, and why: each connection's own
/// TCP clock (writes, retransmissions at RTO 200 ms doubling, window probes), advanced lazily to the
/// instant a scan looks, against the paths' history (backend silences, blackholes, local faults).
struct WireState {
    /// How often the client writes (nil: it only reads, or idles).
    var writeEvery: Int?
    var phase: Int
    /// The peer stopped reading: the window is shut and the kernel probes it.
    var zeroWindow: Bool
    var roundTrip: Int
    var blackholedAt: Int?

    var advancedTo: Int
    var lastAck: Int
    /// The first unanswered transmission of the data now waiting.
    var waitingSince: Int?
    var lastSend: Int
    var fires = 0
    var nextFire = 0
    var pendingAck: Int?
    /// Why its latest transmission went unanswered, and the local fault it went into (by its start).
    var cause: Cause?
    var localFault: Int?
    /// Its first unanswered transmission into that local fault.
    var caughtAt: Int?
    /// A scan that could see that local fault found this connection in trouble in it (by the fault's start).
    var troubleSeenIn: Int?
    var probesOut = 0

    enum Cause: Equatable {
        /// Its own path: a blackhole, or its backend silent.
        case own
        /// The fault on this side.
        case local
    }
}

extension Simulator {
    func newWire(opened: Int) -> WireState {
        let setting = world.stuck
        var writeEvery: Int?
        var zeroWindow = false
        guard setting.afterMilliseconds != nil else {
            return WireState(
                writeEvery: nil, phase: 0, zeroWindow: false, roundTrip: 1, blackholedAt: nil, advancedTo: opened, lastAck: opened,
                lastSend: opened, nextFire: opened + 200)
        }
        do {
            if random.chance(setting.zeroWindowShare) {
                zeroWindow = true
            } else if random.chance(setting.writerShare) {
                writeEvery = random.pick(setting.writePeriods)
            }
        }
        let phase = random.int(in: 0..<(writeEvery ?? 200))
        return WireState(
            writeEvery: writeEvery, phase: phase, zeroWindow: zeroWindow, roundTrip: random.int(in: 1...40), blackholedAt: nil,
            advancedTo: opened, lastAck: opened, lastSend: opened, nextFire: opened + 200)
    }

    /// The stretch of faults on this side that covers `time`: overlapping faults are one fault, from
    /// the first's start to the last's end.
    func localFaultActive(at time: Int) -> (from: Int, until: Int)? {
        let faults = world.happenings.compactMap { happening -> (from: Int, until: Int)? in
            if case .localFault(let at, let lasting) = happening { return (at, at + lasting) }
            return nil
        }
        guard var stretch = faults.first(where: { time >= $0.from && time < $0.until }) else { return nil }
        var grew = true
        while grew {
            grew = false
            for fault in faults where fault.from <= stretch.until && fault.until >= stretch.from {
                if fault.from < stretch.from || fault.until > stretch.until {
                    stretch = (min(stretch.from, fault.from), max(stretch.until, fault.until))
                    grew = true
                }
            }
        }
        return stretch
    }

    func backendFlows(_ backend: Int, at time: Int) -> Bool {
        var flows = true
        for change in flowHistory[backend] ?? [] where change.at <= time { flows = change.flows }
        return flows
    }

    func pathBroken(_ connection: Connection, at time: Int) -> WireState.Cause? {
        if let at = connection.wire.blackholedAt, at <= time { return .own }
        if !backendFlows(connection.backend, at: time) { return .own }
        for happening in world.happenings {
            if case .dataLoss(let at, let backend, let lasting) = happening, backend == connection.backend, time >= at, time < at + lasting
            {
                return .own
            }
        }
        return localFaultActive(at: time) == nil ? nil : .local
    }

    /// Runs the connection's TCP clock up to `time`.
    func advance(_ index: Int, to time: Int) {
        var connection = connections[index]
        var wire = connection.wire
        while true {
            var next = Int.max
            var kind = 0
            if let ack = wire.pendingAck, ack < next { (next, kind) = (ack, 1) }
            if wire.zeroWindow {
                if wire.nextFire < next { (next, kind) = (wire.nextFire, 4) }
            } else if wire.waitingSince != nil {
                if wire.pendingAck == nil, wire.nextFire < next { (next, kind) = (wire.nextFire, 3) }
            } else if let every = wire.writeEvery {
                let start = connection.opened + wire.phase
                let after = max(wire.advancedTo + 1, start)
                let write = start + (after - start + every - 1) / every * every
                if write < next { (next, kind) = (write, 2) }
            }
            guard next <= time else { break }
            wire.advancedTo = next
            let broken = pathBroken(connection, at: next)
            switch kind {
            case 1:
                wire.lastAck = next
                wire.pendingAck = nil
                wire.probesOut = 0
                if !wire.zeroWindow {
                    (wire.waitingSince, wire.fires, wire.cause) = (nil, 0, nil)
                }
            case 2:
                (wire.waitingSince, wire.fires, wire.lastSend, wire.nextFire) = (next, 0, next, next + 200)
                if broken == nil {
                    wire.pendingAck = next + wire.roundTrip
                } else {
                    caught(&wire, broken, at: next)
                }
            case 3:
                wire.fires += 1
                wire.lastSend = next
                wire.nextFire = next + min(120_000, 200 << min(wire.fires, 10))
                if broken == nil {
                    wire.pendingAck = next + wire.roundTrip
                } else {
                    caught(&wire, broken, at: next)
                }
            default:
                // A window probe; the interval doubles whether or not it is answered.
                wire.fires += 1
                wire.nextFire = next + min(120_000, 200 << min(wire.fires, 10))
                if broken == nil {
                    wire.pendingAck = next + wire.roundTrip
                } else {
                    wire.probesOut += 1
                    caught(&wire, broken, at: next)
                }
            }
        }
        connection.wire = wire
        connections[index] = connection
    }

    /// A transmission went unanswered at `time`: why, and when a local fault first caught it.
    func caught(_ wire: inout WireState, _ cause: WireState.Cause?, at time: Int) {
        let fault = localFaultActive(at: time)?.from
        if fault != wire.localFault || wire.caughtAt == nil { wire.caughtAt = time }
        (wire.cause, wire.localFault) = (cause, fault)
    }

    /// The newest segment the connection received: its ACKs, and a stream's lines (every 200 ms
    /// while its path carries them).
    func lastHeard(_ connection: Connection, at time: Int) -> Int {
        var newest = connection.wire.lastAck
        if connection.streaming, let flowing = lastCarried(connection, at: time), flowing >= connection.opened {
            newest = max(newest, flowing - flowing % 200)
        }
        return newest
    }

    /// The last moment up to `time` the connection's path carried segments, whatever broke it since
    /// (its backend silent, a blackhole, a fault on this side, one after another: one silence).
    func lastCarried(_ connection: Connection, at time: Int) -> Int? {
        if pathBroken(connection, at: time) == nil { return time }
        var boundaries = (flowHistory[connection.backend] ?? []).map(\.at)
        for happening in world.happenings {
            if case .localFault(let at, let lasting) = happening { boundaries += [at, at + lasting] }
            if case .dataLoss(let at, let backend, let lasting) = happening, backend == connection.backend {
                boundaries += [at, at + lasting]
            }
        }
        if let at = connection.wire.blackholedAt { boundaries.append(at) }
        for boundary in Set(boundaries).filter({ $0 <= time && $0 > connection.opened }).sorted(by: >)
        where pathBroken(connection, at: boundary - 1) == nil {
            return boundary - 1
        }
        return pathBroken(connection, at: connection.opened) == nil ? connection.opened : nil
    }

    /// The connection as a sock_diag dump with tcp_info would show it now.
    func diagnosed(_ connection: Connection) -> DiagnosedSocket {
        let wire = connection.wire
        // Heard from the peer: an ACK or a streamed segment, one clock for both here.
        let heard = UInt32(now - lastHeard(connection, at: now))
        var info = TCPInfo(lastAckReceivedMilliseconds: heard)
        info.lastDataReceivedMilliseconds = heard
        var sendQueue: UInt32 = 0
        var timer: UInt8 = 0
        if wire.zeroWindow {
            (sendQueue, timer) = (1_000, StuckRule.zeroWindowProbeTimer)
            info.probes = UInt8(min(wire.probesOut, 255))
            info.backoff = UInt8(min(wire.fires, 255))
        } else if wire.waitingSince != nil {
            timer = StuckRule.retransmitTimer
            info.backoff = UInt8(min(wire.fires, 255))
            info.retransmits = info.backoff
            if wire.cause == .local && wire.pendingAck == nil {
                // Dropped on this side: queued, never sent, no clock in one look.
                sendQueue = 64
            } else {
                info.unacked = 1
                info.rtoMicroseconds = UInt32(min(120_000, 200 << min(wire.fires, 10))) * 1000
                info.lastDataSentMilliseconds = UInt32(now - wire.lastSend)
            }
        }
        return DiagnosedSocket(
            family: .inet, transport: .tcp, state: .established,
            id: SocketID(
                source: Endpoint(address: .v4(0x0A00_FF01), port: UInt16(20_000 + connection.id % 40_000)),
                destination: world.backends[connection.backend], cookie: UInt64(connection.id + 1)),
            timer: timer, sendQueue: sendQueue, tcpInfo: info)
    }

    /// A stuck scan, as WorkerReapKernel.scanStuck does it: the pool's listing judged whole, then the
    /// purge's own look ends what the rule still condemns among what the judgement allowed.
    func scanStuck(_ poolName: String, limit: Int) -> (ended: [Connection], left: Int, localFault: Bool) {
        guard let pool = world.configuration.pools.first(where: { $0.name == poolName }) else { return ([], 0, false) }
        let members = Set(pool.backends.map(index(of:)))
        for index in connections.indices where members.contains(connections[index].backend) { advance(index, to: now) }
        noteLocalFault(pool: pool)
        let listed = connections.filter { members.contains($0.backend) }
        let after = UInt32(pool.stuckAfter.seconds * 1000)
        let heldElsewhere = StuckJudgement.heldElsewhere(stuckCarried, besides: poolName)
        let judgement = StuckJudgement(
            listed: listed.map(diagnosed), pool: pool.backends, stuckAfterMilliseconds: after, carried: stuckCarried[poolName] ?? .init(),
            heldElsewhere: heldElsewhere, at: instant(now))
        stuckCarried[poolName] = judgement.carried
        guard !judgement.localFault, !judgement.endable.isEmpty else { return ([], 0, judgement.localFault) }
        let rule = StuckRule(afterMilliseconds: after, observedWaits: judgement.observedWaits, onlyAmong: judgement.endable)
        let condemned = listed.filter { rule.condemns(diagnosed($0)) }
        return (Array(condemned.prefix(limit)), max(0, condemned.count - limit), false)
    }

    /// Ground truth for a stuck end: the connection's data really waited `stuck_after` (or its shut
    /// window's peer stopped answering), and what left it unanswered is its own path, not a fault on
    /// this side that the rule could see (every backend of the pool then had a writer caught by it).
    func checkStuck(_ connection: Connection, pool: PoolConfiguration) {
        let wire = connection.wire
        let after = Int(pool.stuckAfter.seconds * 1000)
        let backend = connection.backend
        if !pool.backends.contains(where: { latestProbe[BackendKey(pool: pool.name, backend: $0)] == true }) {
            fail("ended a stuck connection to backend \(backend) while no backend of \(pool.name) answers")
        }
        if wire.zeroWindow {
            if wire.probesOut == 0 { fail("ended a shut window to backend \(backend) whose peer answers its probes") }
        } else if let since = wire.waitingSince, wire.pendingAck == nil || wire.cause != nil {
            if now - since < after { fail("ended a connection to backend \(backend) as stuck after its data waited \(now - since) ms") }
        } else {
            fail("ended a connection to backend \(backend) as stuck with nothing waiting unanswered")
        }
        // Left waiting by a seen fault: nothing heard from the peer since it lifted (a stream's segment
        // since shows the rule an acknowledgement, and its hold goes with it).
        let heardSince = wire.localFault.flatMap { localFaultActive(at: $0)?.until }.map { lastHeard(connection, at: now) >= $0 } ?? false
        if wire.cause == .local, !heardSince, pathBroken(connection, at: now) != .own, let fault = wire.localFault,
            wire.troubleSeenIn == fault
        {
            fail(
                "ended a connection to backend \(backend) as stuck that the local fault from \(fault) ms left waiting "
                    + "(waiting since \(wire.waitingSince ?? -1) ms, \(wire.fires) timer fires, the last at \(wire.lastSend) ms)")
        }
    }

    /// At a scan during a local fault: whether the rule can see it now, every backend of the pool that
    /// holds a connection (two or more; one alone cannot tell a local fault from its own path's:
    /// StuckJudgement) holding one that the fault first caught half of `stuck_after` ago, a timer fired
    /// (in trouble). A fault seen once holds its connections after it lifts.
    func noteLocalFault(pool: PoolConfiguration) {
        guard let fault = localFaultActive(at: now) else { return }
        let after = Int(pool.stuckAfter.seconds * 1000)
        let holding = Set(connections.map(\.backend)).intersection(pool.backends.map(index(of:)))
        func inTrouble(_ connection: Connection) -> Bool {
            holding.contains(connection.backend) && connection.wire.cause == .local && connection.wire.localFault == fault.from
                && (connection.wire.caughtAt ?? now) <= now - after / 2 - 250
        }
        let seen = holding.count >= 2 && holding.allSatisfy { backend in connections.contains { $0.backend == backend && inTrouble($0) } }
        guard seen else { return }
        for index in connections.indices where inTrouble(connections[index]) { connections[index].wire.troubleSeenIn = fault.from }
    }

    /// Liveness for a blackholed writer toward a backend that stays up, in a quiet world: ended
    /// within a write period, `stuck_after`, two scans and a slow pass. One that a fault on this side
    /// held before is owed it only after its next retransmission: until one goes unanswered after the
    /// fault is known lifted, the rule cannot tell the blackhole from the fault's wait.
    func checkStuckLiveness(connection id: Int, since: Int, again: Bool) {
        guard let index = connections.firstIndex(where: { $0.id == id }) else { return }
        advance(index, to: now)
        let connection = connections[index]
        if connection.wire.troubleSeenIn != nil, !again, let after = world.stuck.afterMilliseconds {
            schedule(connection.wire.nextFire + after + 1_500, .stuckLiveness(connection: id, since: since, again: true))
            return
        }
        // Another connection blackholed toward every other backend holding connections looks like a
        // fault on this side (StuckJudgement): it is held, so only a lone blackhole owes liveness.
        let quiet = world.happenings.allSatisfy { happening in
            if case .blackhole(since, connection.backend) = happening { return true }
            return happening.at < since - 10_000 || happening.at > now
        }
        // A blackhole lasts until its connection is ended: an earlier one still open toward another
        // backend is no quiet world, whenever it began (seed 90,033,391).
        let otherBlackholes = connections.contains { $0.id != id && $0.wire.blackholedAt != nil }
        guard quiet, !otherBlackholes, conditions.allSatisfy({ $0 == .alive }) else { return }
        fail("a blackholed connection to backend \(connection.backend) (writes every \(connection.wire.writeEvery ?? 0) ms) still open")
    }
}
