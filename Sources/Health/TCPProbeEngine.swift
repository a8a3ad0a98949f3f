import NetworkAddress
import OS
import Synchronization

/// The agent's tcp probes and its plain http ones on fresh connections, on one thread of their
/// own: a timer heap, non-blocking connects closed with an RST (ProbeSocket) and one epoll wait for
/// them all. Measured first (`make bench`, probe_bench.py): a NIO channel per probe (bootstrap,
/// pipeline, futures, about 18 system calls) was half the agent's CPU at 200 backends; a tcp probe
/// here makes 6 calls and allocates little. A probe means what the NIO prober's does: connected
/// (and for http, the expected status) is success; ECONNREFUSED is `refused`; no SYN-ACK within the
/// timeout or another connect error is `unreachable`; anything wrong after the connect is `unhealthy`.
/// (https, and http with `probe.reuse`, stay on NIO: TLS and kept connections live there.)
public final class TCPProbeEngine: Sendable {
    public typealias Completion = @Sendable (ProbeResult) -> Void

    /// What a probe asks once connected.
    public enum Check: Sendable {
        case connect
        /// Send `request` (one GET that asks to close), read the status line, expect one of `expect`.
        case http(request: [UInt8], expect: Set<Int>)

        /// The request a `spec` of kind http sends to `target`: the NIO prober's headers.
        public static func http(_ spec: ProbeSpec, target: Endpoint) -> Check {
            let host = spec.tls.serverName ?? target.description
            let text = "GET \(spec.path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: conn-reaper\r\nConnection: close\r\n\r\n"
            return .http(request: Array(text.utf8), expect: spec.expectStatus)
        }
    }

    struct Periodic: Sendable {
        let target: Endpoint
        let check: Check
        let interval: Duration
        let timeout: Duration
        let onResult: Completion
    }

    enum Command: Sendable {
        case add(Int, Periodic)
        case remove(Int)
        case once(Endpoint, Check, Duration, Completion)
    }

    private struct Inbox {
        var commands: [Command] = []
        var stopping = false
    }

    /// The commands for the engine's thread, shared with it.
    private final class Mailbox: Sendable {
        let inbox = Mutex(Inbox())
    }

    private let mailbox = Mailbox()
    private let wakeup: PollerWakeup
    private let thread: NamespaceThread
    private let nextID = Atomic<Int>(0)

    /// `onFailure` hears it if the thread's loop ever fails (its epoll instance could not be made):
    /// from then on no probe runs here.
    public init(onFailure: @escaping @Sendable (SystemCallError) -> Void) throws(SystemCallError) {
        wakeup = try PollerWakeup()
        do throws(SystemCallError) {
            thread = try NamespaceThread(entering: nil)
        } catch {
            wakeup.close()
            throw error
        }
        let (mailbox, wakeup) = (self.mailbox, self.wakeup)
        thread.start {
            do throws(SystemCallError) {
                try EngineLoop(wakeup: wakeup).run {
                    mailbox.inbox.withLock { inbox in
                        defer { inbox.commands.removeAll(keepingCapacity: true) }
                        return (inbox.commands, inbox.stopping)
                    }
                }
            } catch {
                onFailure(error)
            }
            // Under the lock that every wake takes, and once stopping: no wake can hit a closed
            // (or reused) descriptor.
            let dropped = mailbox.inbox.withLock { inbox in
                inbox.stopping = true
                wakeup.close()
                defer { inbox.commands.removeAll() }
                return inbox.commands
            }
            for case .once(_, _, _, let completion) in dropped {
                completion(ProbeResult(failure: .unreachable, duration: .zero, detail: "prober stopped"))
            }
        }
    }

    /// Probes `target` every `interval` (start to start, ±10 % jitter, the first at a random point
    /// of the interval) until `remove`; results go to `onResult` on the engine's thread.
    public func add(target: Endpoint, check: Check, interval: Duration, timeout: Duration, onResult: @escaping Completion) -> Int {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).newValue
        send(.add(id, Periodic(target: target, check: check, interval: interval, timeout: timeout, onResult: onResult)))
        return id
    }

    public func remove(_ id: Int) {
        send(.remove(id))
    }

    /// One probe now, outside any schedule.
    public func probe(_ target: Endpoint, check: Check, timeout: Duration) async -> ProbeResult {
        await withCheckedContinuation { continuation in
            send(.once(target, check, timeout, { continuation.resume(returning: $0) }))
        }
    }

    /// Ends the thread; probes in flight are closed, their results dropped.
    public func shutdown() {
        mailbox.inbox.withLock { inbox in
            if !inbox.stopping { wakeup.wake() }
            inbox.stopping = true
        }
        thread.stop()
    }

    private func send(_ command: Command) {
        let accepted = mailbox.inbox.withLock { inbox in
            guard !inbox.stopping else { return false }
            inbox.commands.append(command)
            wakeup.wake()
            return true
        }
        if !accepted, case .once(_, _, _, let completion) = command {
            completion(ProbeResult(failure: .unreachable, duration: .zero, detail: "prober stopped"))
        }
    }
}

/// The engine thread's own state: never shared, so nothing in it is locked.
private final class EngineLoop {
    private struct InFlight {
        let descriptor: Int32
        let started: ContinuousClock.Instant
        let check: TCPProbeEngine.Check
        let periodic: Int?
        let completion: TCPProbeEngine.Completion
        /// Connected, request sent: waiting for the status line.
        var awaitingResponse = false
        var response: [UInt8] = []
    }

    private enum Due {
        case start(Int)
        case timeout(UInt64)
    }

    private let poller: EventPoller
    private var periodic: [Int: TCPProbeEngine.Periodic] = [:]
    private var inFlight: [UInt64: InFlight] = [:]
    private var timers = TimerHeap<Due>()
    private var nextToken: UInt64 = 0
    private var random = SeededRandom()
    private var readBuffer = [UInt8](repeating: 0, count: 512)

    init(wakeup: PollerWakeup) throws(SystemCallError) {
        poller = try EventPoller(wakeup: wakeup)
    }

    func run(_ receive: () -> ([TCPProbeEngine.Command], Bool)) throws(SystemCallError) {
        while true {
            let (commands, stopping) = receive()
            if stopping {
                // Whoever awaits a probe of its own gets an answer; scheduled ones just end.
                let stopped = ProbeResult(failure: .unreachable, duration: .zero, detail: "prober stopped")
                for probe in inFlight.values {
                    ProbeSocket.abort(probe.descriptor)
                    if probe.periodic == nil { probe.completion(stopped) }
                }
                for case .once(_, _, _, let completion) in commands { completion(stopped) }
                return
            }
            for command in commands { apply(command) }
            var now = ContinuousClock.now
            while let (due, what) = timers.popDue(at: now) {
                fire(what, due: due)
                now = .now
            }
            let wait = timers.nextDue.map { next -> Int32 in
                let left = next - now
                // Rounded up, so the wait never ends just before a timer is due.
                return Int32(
                    clamping: (left.components.seconds * 1000) + (left.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
                )
            }
            try poller.wait(milliseconds: wait ?? -1) { token in ready(token) }
        }
    }

    private func apply(_ command: TCPProbeEngine.Command) {
        switch command {
        case .add(let id, let schedule):
            periodic[id] = schedule
            timers.push(.now + schedule.interval * jitter(in: 0..<1), .start(id))
        case .remove(let id):
            periodic[id] = nil
        case .once(let target, let check, let timeout, let completion):
            start(target, check, timeout: timeout, periodic: nil, completion: completion)
        }
    }

    private func fire(_ what: Due, due: ContinuousClock.Instant) {
        switch what {
        case .start(let id):
            guard let schedule = periodic[id] else { return }
            start(schedule.target, schedule.check, timeout: schedule.timeout, periodic: id, completion: schedule.onResult)
        case .timeout(let token):
            guard let probe = inFlight.removeValue(forKey: token) else { return }
            ProbeSocket.abort(probe.descriptor)
            // Connected and then silent: something is there and not well; no SYN-ACK: nothing answered.
            finish(
                probe,
                probe.awaitingResponse
                    ? Self.afterConnect("timeout or closed before a response", since: probe.started)
                    : ProbeResult(failure: .unreachable, duration: .now - probe.started, detail: "connect timeout"))
        }
    }

    private func start(
        _ target: Endpoint, _ check: TCPProbeEngine.Check, timeout: Duration, periodic id: Int?,
        completion: @escaping TCPProbeEngine.Completion
    ) {
        let started = ContinuousClock.now
        nextToken &+= 1
        let token = nextToken
        let probe: InFlight
        do throws(SystemCallError) {
            let descriptor = try ProbeSocket.connect(to: target)
            probe = InFlight(descriptor: descriptor, started: started, check: check, periodic: id, completion: completion)
            do throws(SystemCallError) { try poller.watchWritable(descriptor, token: token) } catch {
                ProbeSocket.abort(descriptor)
                throw error
            }
        } catch {
            finish(
                InFlight(descriptor: -1, started: started, check: check, periodic: id, completion: completion),
                Self.result(error, since: started))
            return
        }
        inFlight[token] = probe
        timers.push(started + timeout, .timeout(token))
    }

    private func ready(_ token: UInt64) {
        guard var probe = inFlight.removeValue(forKey: token) else { return }
        if probe.awaitingResponse {
            readResponse(&probe, token: token)
            return
        }
        if let error = TCPSocket.pendingError(probe.descriptor) {
            ProbeSocket.abort(probe.descriptor)
            finish(probe, Self.result(error, since: probe.started))
            return
        }
        guard case .http(let request, _) = probe.check else {
            ProbeSocket.abort(probe.descriptor)
            finish(probe, .succeeded(after: .now - probe.started, "connected"))
            return
        }
        do throws(SystemCallError) {
            // A GET of a hundred bytes into an empty send buffer goes whole.
            guard try TCPSocket.send(probe.descriptor, request) == request.count else {
                throw SystemCallError(call: "send", errno: .wouldBlock)
            }
            try poller.watchReadable(probe.descriptor, token: token)
        } catch {
            ProbeSocket.abort(probe.descriptor)
            finish(probe, Self.afterConnect("\(Prober.describe(errno: error.errno.rawValue))", since: probe.started))
            return
        }
        probe.awaitingResponse = true
        inFlight[token] = probe
    }

    /// Reads until the status line is whole: `HTTP/1.1 200 ...`.
    private func readResponse(_ probe: inout InFlight, token: UInt64) {
        let received: Int
        do throws(SystemCallError) {
            received = try TCPSocket.receive(probe.descriptor, into: &readBuffer)
        } catch {
            if error.errno == .resourceTemporarilyUnavailable {
                received = -1
            } else {
                ProbeSocket.abort(probe.descriptor)
                finish(probe, Self.afterConnect(Prober.describe(errno: error.errno.rawValue), since: probe.started))
                return
            }
        }
        if received == 0 {
            ProbeSocket.abort(probe.descriptor)
            finish(probe, Self.afterConnect("timeout or closed before a response", since: probe.started))
            return
        }
        if received > 0 { probe.response += readBuffer[0..<received] }
        guard case .http(_, let expect) = probe.check, let status = HTTPStatusLine.status(in: probe.response) else {
            // Not whole yet: wait for more, within the same timeout.
            do throws(SystemCallError) { try poller.watchReadable(probe.descriptor, token: token) } catch {
                ProbeSocket.abort(probe.descriptor)
                finish(probe, Self.afterConnect(Prober.describe(errno: error.errno.rawValue), since: probe.started))
                return
            }
            inFlight[token] = probe
            return
        }
        ProbeSocket.abort(probe.descriptor)
        if let status, expect.contains(status) {
            finish(probe, .succeeded(after: .now - probe.started, "HTTP \(status)"))
        } else {
            let detail = status.map { "HTTP \($0)" } ?? "not an HTTP response"
            finish(probe, ProbeResult(failure: .unhealthy, duration: .now - probe.started, detail: detail))
        }
    }

    private static func afterConnect(_ detail: String, since started: ContinuousClock.Instant) -> ProbeResult {
        ProbeResult(failure: .unhealthy, duration: .now - started, detail: "after connect: \(detail)")
    }

    private func finish(_ probe: InFlight, _ result: ProbeResult) {
        probe.completion(result)
        guard let id = probe.periodic, let schedule = periodic[id] else { return }
        let next = probe.started + schedule.interval * jitter(in: 0.9..<1.1)
        timers.push(max(next, .now), .start(id))
    }

    private static func result(_ error: SystemCallError, since started: ContinuousClock.Instant) -> ProbeResult {
        let code = error.errno.rawValue
        return ProbeResult(
            failure: ProbeFailure(connectErrno: code), duration: .now - started, detail: "connect: \(Prober.describe(errno: code))")
    }

    private func jitter(in range: Range<Double>) -> Double {
        Double.random(in: range, using: &random)
    }
}

/// The status code of an HTTP/1.x response's first line.
enum HTTPStatusLine {
    /// nil: not whole yet; .some(nil): it is no HTTP status line; .some(code) otherwise.
    static func status(in bytes: [UInt8]) -> Int?? {
        let prefix = Array("HTTP/1.".utf8)
        let checked = min(bytes.count, prefix.count)
        guard bytes[0..<checked].elementsEqual(prefix[0..<checked]) else { return .some(nil) }
        // "HTTP/1.1 200": a digit of version, a space, three digits.
        guard bytes.count >= 12 else { return nil }
        guard bytes[8] == UInt8(ascii: " ") else { return .some(nil) }
        var code = 0
        for byte in bytes[9..<12] {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return .some(nil) }
            code = code * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return .some(code)
    }
}

/// A binary min-heap of deadlines.
struct TimerHeap<Payload> {
    private var items: [(due: ContinuousClock.Instant, payload: Payload)] = []

    var nextDue: ContinuousClock.Instant? { items.first?.due }

    mutating func push(_ due: ContinuousClock.Instant, _ payload: Payload) {
        items.append((due, payload))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].due < items[parent].due else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    /// The earliest entry if it is due at `now`, removed.
    mutating func popDue(at now: ContinuousClock.Instant) -> (ContinuousClock.Instant, Payload)? {
        guard let first = items.first, first.due <= now else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < items.count && items[left].due < items[smallest].due { smallest = left }
                if right < items.count && items[right].due < items[smallest].due { smallest = right }
                if smallest == parent { break }
                items.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return (first.due, first.payload)
    }
}
