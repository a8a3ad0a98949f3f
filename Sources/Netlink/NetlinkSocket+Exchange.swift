import CLinuxNetlink
import SystemPackage
import OS

/// How a dump ended.
public struct DumpOutcome: Sendable, Equatable {
    /// NLM_F_DUMP_INTR was seen on the last run too: the table kept changing, entries may be missing.
    public var interrupted = false
    /// Runs begun again because the receive queue overflowed (ENOBUFS): what the run sent was lost.
    public var restarts = 0
    /// Runs repeated because the kernel flagged them interrupted (NLM_F_DUMP_INTR).
    public var redone = 0

    public init(interrupted: Bool = false, restarts: Int = 0, redone: Int = 0) {
        self.interrupted = interrupted
        self.restarts = restarts
        self.redone = redone
    }
}

/// The kernel's answer to one acknowledged request.
public enum Acknowledgement: Sendable, Equatable {
    case done
    case failed(Errno)
    /// The ack was lost (the receive queue overflowed): the request may or may not have taken effect.
    case unconfirmed
}

/// The replies of one dump run, datagram by datagram: which messages are its entries, whether it
/// ended, with what errno, and whether the kernel flagged it interrupted. No socket: a test feeds it bytes.
public struct DumpReplies: Sendable {
    public let sequence: UInt32
    public private(set) var finished = false
    public private(set) var interrupted = false
    /// The errno the dump ended with (NLMSG_DONE or NLMSG_ERROR), 0 when it ended well.
    public private(set) var errorCode: Int32 = 0

    public init(sequence: UInt32) {
        self.sequence = sequence
    }

    /// Hands this run's entries to `body`; messages of other requests (an earlier run's) are skipped.
    public mutating func take(_ messages: NetlinkMessages, _ body: (NetlinkMessage) -> Void) {
        for message in messages where message.sequence == sequence && !finished {
            if message.isDumpInterrupted { interrupted = true }
            if message.isDone || message.isError {
                let code = message.errorCode ?? 0
                // A plain ack (NLMSG_ERROR 0) is not the end: NLMSG_DONE is.
                if code != 0 || message.isDone {
                    errorCode = code
                    finished = true
                }
                continue
            }
            body(message)
        }
    }
}

extension NetlinkSocket {
    /// Runs are restarted at most this many times after ENOBUFS, and redone at most this many times
    /// after NLM_F_DUMP_INTR; then the dump fails (ENOBUFS) or is returned flagged interrupted.
    public static let dumpRestartLimit = 3
    public static let dumpRedoLimit = 2

    /// Sends a dump request and hands every reply message to `body` until NLMSG_DONE. A run whose
    /// replies overflowed the receive queue (ENOBUFS) is begun again, and one the kernel flagged
    /// interrupted is repeated, so `body` may see an entry more than once: callers deduplicate
    /// (the entries a torn run did return are real; a repeat adds the ones it missed).
    @discardableResult
    public func dump(
        _ request: some NetlinkRequest, _ body: (NetlinkMessage) -> Void
    ) throws(SystemCallError) -> DumpOutcome {
        var outcome = DumpOutcome()
        while true {
            let sequence = nextSequence()
            try send(request.serialized(sequence: sequence, portID: portID))
            var replies = DumpReplies(sequence: sequence)
            do throws(SystemCallError) {
                while !replies.finished { replies.take(try receive(), body) }
                if replies.errorCode != 0 { throw request.failure(code: replies.errorCode) }
            } catch  where error.errno == .noBufferSpace && outcome.restarts < Self.dumpRestartLimit {
                outcome.restarts += 1
                drain(dump: sequence)
                continue
            }
            if replies.interrupted, outcome.redone < Self.dumpRedoLimit {
                outcome.redone += 1
                continue
            }
            outcome.interrupted = replies.interrupted
            return outcome
        }
    }

    /// Reads what is left of an overrun run, so the kernel has no dump running on this socket
    /// (it refuses a second one with EBUSY): until its end arrives, or nothing comes for 100 ms.
    private func drain(dump sequence: UInt32) {
        while (try? waitReadable(milliseconds: 100)) == true {
            guard let messages = try? receive() else { continue }
            if messages.contains(where: { $0.sequence == sequence && ($0.isDone || $0.isError) }) { return }
        }
    }

    /// Sends a request the kernel answers with one message (a get, not a dump); nil when it
    /// answers ENOENT (no such object).
    public func fetch(_ request: some NetlinkRequest) throws(SystemCallError) -> NetlinkMessage? {
        let sequence = nextSequence()
        try send(request.serialized(sequence: sequence, portID: portID))
        while true {
            for message in try receive() where message.sequence == sequence {
                guard message.isError else { return message }
                let code = message.errorCode ?? 0
                if code == 0 { continue }
                if code == Errno.noSuchFileOrDirectory.rawValue { return nil }
                throw request.failure(code: code)
            }
        }
    }

    /// Sends `requests` (each asking for an ack) in batches of `batchSize` per sendto and collects
    /// every ack. One failure does not stop the rest; acks lost to a full queue come back as `.unconfirmed`.
    ///
    /// `quietSuccess`: only a batch's last request asks for an ack. The kernel answers a failure
    /// whatever the flags say, handles a batch in order inside sendto, and queues its answers in
    /// order, so once the last request's ack is read, a request with no answer before it succeeded.
    /// A batch whose answers overflowed the queue (ENOBUFS) leaves its unanswered requests
    /// `.unconfirmed`, as with an ack each. Spares the kernel an ack per success and us reading it.
    public func exchangeAcknowledged(
        _ requests: [some NetlinkRequest], batchSize: Int = 1024, quietSuccess: Bool = false
    ) throws(SystemCallError) -> [Acknowledgement] {
        var results = [Acknowledgement](repeating: .unconfirmed, count: requests.count)
        var start = 0
        while start < requests.count {
            let end = min(start + batchSize, requests.count)
            var sequenceToIndex: [UInt32: Int] = [:]
            sequenceToIndex.reserveCapacity(end - start)
            var buffer: [UInt8] = []
            buffer.reserveCapacity((end - start) * 96)
            var fence: UInt32 = 0
            for index in start..<end {
                let sequence = nextSequence()
                sequenceToIndex[sequence] = index
                let messageStart = buffer.count
                requests[index].append(to: &buffer, sequence: sequence, portID: portID)
                if quietSuccess, index < end - 1 { buffer[messageStart + 6] &= ~UInt8(0x4) }  // nlmsg_flags: no NLM_F_ACK
                fence = sequence
            }
            try send(buffer)
            var answers = BatchAnswers(pending: sequenceToIndex, fence: quietSuccess ? fence : nil)
            try collectAcknowledgements(into: &results, awaiting: &answers)
            start = end
        }
        return results
    }

    private func collectAcknowledgements(into results: inout [Acknowledgement], awaiting answers: inout BatchAnswers)
        throws(SystemCallError)
    {
        while !answers.settled {
            let messages: NetlinkMessages
            do {
                // The kernel answers a batch inside sendto: what is not queued by now was dropped. A
                // drop is reported (ENOBUFS) only once while the queue stays congested (netlink_overrun),
                // so a silent one must not hold a reap pass in recv until SO_RCVTIMEO.
                if try !waitReadable(milliseconds: answers.lostSome ? 50 : 200) { return }
                messages = try receive()
            } catch  where error.errno == .noBufferSpace {
                answers.noteLoss()
                continue
            }
            answers.take(messages, into: &results)
        }
    }
}

/// The answers to one batch of acknowledged requests, datagram by datagram. Without a fence every
/// request answers; with one (the batch's last request, the only one asking for an ack) the fence's
/// answer settles the batch: the kernel answered every failure before it, so the unanswered
/// succeeded, unless answers were lost (ENOBUFS) meanwhile. No socket: a test feeds it bytes.
public struct BatchAnswers: Sendable {
    /// Sequence number -> the request's index in the results.
    public private(set) var pending: [UInt32: Int]
    public let fence: UInt32?
    public private(set) var settled = false
    public private(set) var lostSome = false

    public init(pending: [UInt32: Int], fence: UInt32? = nil) {
        self.pending = pending
        self.fence = fence
        settled = pending.isEmpty
    }

    /// The receive queue overflowed: some answers are gone, the unanswered stay `.unconfirmed`.
    public mutating func noteLoss() { lostSome = true }

    public mutating func take(_ messages: NetlinkMessages, into results: inout [Acknowledgement]) {
        for message in messages where message.isError && !settled {
            guard let index = pending.removeValue(forKey: message.sequence) else { continue }
            let code = message.errorCode ?? 0
            results[index] = code == 0 ? .done : .failed(Errno(rawValue: code))
            if message.sequence == fence {
                if !lostSome { for quiet in pending.values { results[quiet] = .done } }
                settled = true
            }
        }
        if pending.isEmpty { settled = true }
    }
}
