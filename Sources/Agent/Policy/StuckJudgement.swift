import NetworkAddress
import Reaper
import SockDiag

/// Which of a stuck scan's condemned connections may be ended, judged on the whole pool and on what
/// earlier scans saw. When every backend of a pool that holds connections (two or more) has one in
/// trouble at once, the fault is nearer to us (our link, a local rule, our NIC), not at any backend,
/// and the clients would reconnect into the same fault: nothing is ended. One backend alone says
/// nothing either way (incident 3: a balancer lost one flow's state), and its stuck connections are
/// ended. A backend that holds none (dead and reaped, or new) says nothing either.
///
/// Judging each scan alone by its condemned connections is not enough (issue #21):
/// - Connections that a fault catches at the same instant cross `stuck_after` at different scans,
///   as far apart as their last ACKs were (a heartbeat's phase), so each is the only condemned one of
///   its scan. The fault is judged on connections *in trouble* instead: data waiting, with evidence
///   it has waited, and no ACK for `troubleAfter`, a lower threshold than `stuck_after`.
/// - Once the fault lifts, each connection recovers at its own next retransmission, seconds apart
///   under the kernel's backoff; the one still waiting would be the pool's only stuck connection. So a
///   connection in trouble during a local fault is held: not ended until the fault is known to have
///   lifted (another connection it held was acknowledged) and its own timer fired
///   `timerFiresToRelease` more time unanswered since, or it is acknowledged (then it is healthy, and
///   the hold goes). Not from the last scan that saw the fault: scans may stop meanwhile (the guard
///   holds them while no backend answers) or stop seeing a fault that goes on (a backend's
///   connections reaped and made anew, or drained), and fires into a fault that goes on prove nothing
///   of the connection's own path (simulation seeds 1,192, 3,419 and 5,611).
///
/// How long data has waited is measured across scans too (`StuckRule`): a connection that writes
/// once every few seconds shows an old last ACK the moment it writes, so one lost segment is no
/// evidence; data seen waiting on an earlier scan, with no ACK since, has waited at least since then.
///
/// Pure: a scan's listing (every established connection toward the pool, with tcp_info), when it was
/// taken, and what the previous scan carried in; which cookies may be ended and what to carry out.
/// Socket cookies come from one counter for the whole host, so cookies from several namespaces never
/// collide.
public struct StuckJudgement: Sendable, Equatable {
    /// What a scan hands the next. Bounded by the listing: a cookie no longer listed, or no longer in
    /// trouble, is dropped.
    public struct Carried: Sendable, Equatable {
        /// Sockets with data waiting (`StuckRule.isWaiting`): the scan that first saw it waiting with
        /// no ACK since. On the next scan, the evidence of how long it has waited.
        public var waitingSince: [UInt64: ContinuousClock.Instant] = [:]
        /// Sockets in trouble during a local fault, as the last scan that saw the fault found them.
        public var held: [UInt64: Hold] = [:]

        /// A connection the fault held was acknowledged since the last scan that saw it: the fault lifted.
        public var faultLifted: Bool

        public init(waitingSince: [UInt64: ContinuousClock.Instant] = [:], held: [UInt64: Hold] = [:], faultLifted: Bool = false) {
            self.waitingSince = waitingSince
            self.held = held
            self.faultLifted = faultLifted
        }
    }

    /// A connection in trouble during a local fault, as the last scan that saw the fault found it,
    /// then as the first scan that knew the fault lifted found it (`sinceLift`).
    public struct Hold: Sendable, Equatable {
        /// Its retransmission and window-probe timers' unanswered fires (tcpi_retransmits + tcpi_probes).
        public var timerFires: Int
        /// Its last ACK's age then: a younger one later means it was acknowledged since.
        public var lastAckMilliseconds: UInt32
        /// `timerFires` counts from a scan that knew the fault lifted.
        public var sinceLift: Bool
        /// Its own path showed broken after the lift at a scan: ended once no new fault has shown by
        /// this instant (`troubleAfter` later), since the fire that showed it may have gone into one.
        public var releaseAt: ContinuousClock.Instant?
        /// With `sinceLift`: its fires as the last scan that saw the fault found them. A fire between
        /// that scan and the one that knew the lift went out before or after the lift, no one can
        /// tell: it proves nothing of its own path (`timerFires` counts from the later scan), but may
        /// be trouble now, in a new fault (`isLeftover` counts from the earlier one).
        public var firesWhenFaultLastSeen: Int?

        public init(
            timerFires: Int, lastAckMilliseconds: UInt32, sinceLift: Bool = false, releaseAt: ContinuousClock.Instant? = nil,
            firesWhenFaultLastSeen: Int? = nil
        ) {
            self.timerFires = timerFires
            self.lastAckMilliseconds = lastAckMilliseconds
            self.sinceLift = sinceLift
            self.releaseAt = releaseAt
            self.firesWhenFaultLastSeen = firesWhenFaultLastSeen
        }
    }

    /// How long each waiting socket's data has waited by this and earlier scans (ms): for the purge
    /// that follows (`StuckRule.observedWaits`).
    public let observedWaits: [UInt64: UInt32]
    /// Condemned by `StuckRule` at `stuck_after`, before the pool is weighed.
    public let condemned: Set<UInt64>
    /// What may be ended: the condemned, less every one while the fault is local, less those held.
    public let endable: Set<UInt64>
    /// Every backend of the pool that holds a connection (two or more) had one in trouble at once.
    public let everyBackendInTrouble: Bool
    public let carried: Carried

    /// A local fault held back condemned connections: what the agent reports (`local_fault`).
    public var localFault: Bool { everyBackendInTrouble && !condemned.isEmpty }

    /// The age of the last ACK from which data waiting counts toward a local fault: half of
    /// `stuck_after`. Connections a fault catches at once have last ACKs as far apart as their writes'
    /// phases; when the first crosses `stuck_after`, the others are at least `stuck_after` less that
    /// spread, so half tolerates a spread of half `stuck_after` (1 s at the 2 s floor, two scans of
    /// `stuck_after`/4; issue #21's heartbeats were 0.6 s apart, more than a scan). Not lower: a live
    /// path that loses a few segments in a row goes unacknowledged for up to 1.4 s (retransmits at 0.2,
    /// 0.6, 1.4 s), and counting those would hold a real one-path fault's connections longer.
    public static func troubleAfter(stuckAfterMilliseconds after: UInt32) -> UInt32 { after / 2 }

    /// Unanswered timer fires past the scan that knew the fault lifted that show a held connection's
    /// own path still broken. One: that scan saw another connection the fault held acknowledged, so
    /// the fault was gone before it, and a fire after it went into no fault of ours. Two would leave a
    /// flow blackholed right after a fault lifted for another doubled backoff, tens of seconds
    /// (simulation seed 60,003,751).
    public static let timerFiresToRelease = 1

    public init(
        listed sockets: [DiagnosedSocket], pool backends: [Endpoint], stuckAfterMilliseconds after: UInt32, carried previous: Carried,
        heldElsewhere: Set<UInt64> = [], at now: ContinuousClock.Instant
    ) {
        let pool = Set(backends)
        var waitingSince: [UInt64: ContinuousClock.Instant] = [:], waits: [UInt64: UInt32] = [:]
        for socket in sockets where pool.contains(socket.remote.unmapped) && StuckRule.isWaiting(socket) {
            let cookie = socket.id.cookie
            let lastAck = now - .milliseconds(socket.tcpInfo?.lastAckReceivedMilliseconds ?? 0)
            // Still the same wait only while no ACK came since the scan that first saw it.
            let since = previous.waitingSince[cookie].flatMap { $0 >= lastAck ? $0 : nil } ?? now
            waitingSince[cookie] = since
            waits[cookie] = UInt32(min((now - since) / .milliseconds(1), Double(UInt32.max)))
        }
        let stuck = StuckRule(afterMilliseconds: after, observedWaits: waits)
        // Trouble only holds, never ends: it takes the weaker evidence of a fired timer too, so that a
        // connection that writes seldom counts the moment a fault catches its write, even when no scan
        // has watched it wait yet (simulation seed 1,211: the first scan after a prober fault saw one
        // backend's connections waiting for seconds, the other's sparse writer just caught, and ended
        // the first's during a fault on this side).
        let trouble = StuckRule(
            afterMilliseconds: Self.troubleAfter(stuckAfterMilliseconds: after), observedWaits: waits, firedTimerIsEvidence: true)
        // The fault has lifted once a connection it held is acknowledged: still listed, and no longer
        // waiting or with a younger last ACK. Until then it may go on unseen.
        let lifted =
            previous.faultLifted
            || sockets.contains { socket in
                guard let recorded = previous.held[socket.id.cookie] else { return false }
                return !trouble.isSuspicious(socket) || Self.acknowledged(socket, since: recorded)
            }
        var suspects = Set<UInt64>(), troubled: [DiagnosedSocket] = [], troubledBackends = Set<Endpoint>(), condemned = Set<UInt64>()
        for socket in sockets where pool.contains(socket.remote.unmapped) {
            guard trouble.isSuspicious(socket) else { continue }
            suspects.insert(socket.id.cookie)
            guard trouble.condemns(socket) else { continue }
            troubled.append(socket)
            if !(lifted && Self.isLeftover(socket, held: previous.held[socket.id.cookie])) {
                troubledBackends.insert(socket.remote.unmapped)
            }
            if stuck.condemns(socket) { condemned.insert(socket.id.cookie) }
        }
        // Every backend that shows something: trouble, or a connection not in trouble that heard from
        // its peer within `troubleAfter`. One that shows nothing either way (it holds no connection,
        // only idle ones, or only ones still waiting out a lifted fault's backoff) must not hide a fault
        // here from the rest: missing evidence is not health (simulation seed 120,768,847: a second
        // fault caught every backend but one, whose writers sat in the first fault's backoff; the
        // others' connections were ended during it).
        let heardWithin = Self.troubleAfter(stuckAfterMilliseconds: after)
        let answering = Set(
            sockets.lazy.filter { socket in
                guard pool.contains(socket.remote.unmapped), !suspects.contains(socket.id.cookie), let info = socket.tcpInfo else {
                    return false
                }
                return min(info.lastAckReceivedMilliseconds, info.lastDataReceivedMilliseconds) <= heardWithin
            }.map(\.remote.unmapped))
        let showing = troubledBackends.union(answering)
        let everyBackend = showing.count >= 2 && answering.isSubset(of: troubledBackends)
        var held: [UInt64: Hold] = [:]
        if everyBackend {
            for socket in troubled { held[socket.id.cookie] = Self.hold(socket) }
        } else {
            // Kept while still waiting: a held socket no longer suspicious was acknowledged (or went idle,
            // or is gone), and is healthy or none of ours.
            for socket in sockets where suspects.contains(socket.id.cookie) {
                guard let recorded = previous.held[socket.id.cookie] else { continue }
                let current = Self.hold(socket)
                guard !Self.acknowledged(socket, since: recorded) else { continue }
                guard lifted else {
                    held[socket.id.cookie] = recorded
                    continue
                }
                // The first scan that knows the fault lifted counts fires from here.
                guard recorded.sinceLift else {
                    held[socket.id.cookie] = Hold(
                        timerFires: current.timerFires, lastAckMilliseconds: recorded.lastAckMilliseconds, sinceLift: true,
                        firesWhenFaultLastSeen: recorded.timerFires)
                    continue
                }
                // A fire counts once its answer is overdue: the last went out an RTT ago or more.
                let stillBrokenAfterTheFault =
                    current.timerFires >= recorded.timerFires + Self.timerFiresToRelease && Self.lastFireUnanswered(socket)
                guard stillBrokenAfterTheFault else {
                    held[socket.id.cookie] = recorded
                    continue
                }
                // A new fault that caught that fire shows as every backend in trouble within troubleAfter
                // (simulation seed 4,741: a second fault 0.8 s after the first lifted caught a held
                // connection's next fire, and it was ended during it).
                guard let due = recorded.releaseAt else {
                    var waiting = recorded
                    waiting.releaseAt = now + .milliseconds(Self.troubleAfter(stuckAfterMilliseconds: after))
                    held[socket.id.cookie] = waiting
                    continue
                }
                if now < due { held[socket.id.cookie] = recorded }
            }
        }
        self.observedWaits = waits
        self.condemned = condemned
        self.everyBackendInTrouble = everyBackend
        // One endpoint, one verdict: a connection another pool holding its backend holds (a local fault
        // that pool sees, which this one, a pool of one, cannot) is not ended here (simulation seed 3,419).
        self.endable = everyBackend ? [] : condemned.subtracting(held.keys).subtracting(heldElsewhere)
        self.carried = Carried(waitingSince: waitingSince, held: held, faultLifted: !everyBackend && lifted && !held.isEmpty)
    }

    /// A retransmission's answer takes a round trip: one sent less than twice the smoothed RTT ago
    /// (at least 200 ms, the kernel's minimum RTO) may still be answered (simulation seed 1,053: a
    /// held connection retransmitted 21 ms before a scan, after the fault had lifted, was ended).
    static func lastFireUnanswered(_ socket: DiagnosedSocket) -> Bool {
        guard let info = socket.tcpInfo, info.unacked > 0 else { return true }
        return info.lastDataSentMilliseconds >= max(200, 2 * info.rttMicroseconds / 1000)
    }

    /// Held by a fault now lifted, and not retransmitted unanswered since the last scan that saw the
    /// fault: its wait is the lifted fault's, and says nothing of a new one (simulation seed 6,407:
    /// shut windows whose next probe was a minute away, toward two backends, made a later blackhole
    /// toward the third look like a fault here, never ended). One whose timer fired again unanswered
    /// since is in trouble now (seed 60,504,184: held through a first fault, caught again by a
    /// second), also when it fired before the lift was known (seed 150,181,092: the fire went out
    /// between the last scan that saw the first fault and the one that knew it lifted, into a second
    /// fault; counted from the later scan, every backend but one showed nothing, and the other's
    /// connections were ended during the second fault).
    static func isLeftover(_ socket: DiagnosedSocket, held recorded: Hold?) -> Bool {
        guard let recorded else { return false }
        let baseline = recorded.sinceLift ? recorded.firesWhenFaultLastSeen ?? recorded.timerFires : recorded.timerFires
        return hold(socket).timerFires <= baseline || !lastFireUnanswered(socket)
    }

    /// What the other pools' last scans hold: a pool's judgement never ends those (one endpoint, one
    /// verdict), as WorkerReapKernel keeps each pool's `Carried`.
    public static func heldElsewhere(_ carried: [String: Carried], besides pool: String) -> Set<UInt64> {
        carried.filter { $0.key != pool }.values.reduce(into: Set<UInt64>()) { $0.formUnion($1.held.keys) }
    }

    static func acknowledged(_ socket: DiagnosedSocket, since recorded: Hold) -> Bool {
        let current = hold(socket)
        return current.lastAckMilliseconds < recorded.lastAckMilliseconds || current.timerFires < recorded.timerFires
    }

    static func hold(_ socket: DiagnosedSocket) -> Hold {
        let info = socket.tcpInfo
        return Hold(
            timerFires: Int(info?.retransmits ?? 0) + Int(info?.probes ?? 0), lastAckMilliseconds: info?.lastAckReceivedMilliseconds ?? 0)
    }
}
