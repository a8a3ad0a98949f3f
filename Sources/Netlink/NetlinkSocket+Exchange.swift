import CLinuxNetlink
import SystemPackage
import OS

/// How a dump ended.
public struct DumpOutcome: Sendable, Equatable {
    /// NLM_F_DUMP_INTR was seen: the table changed under the dump, entries may be missing.
    public var interrupted = false
}

/// The kernel's answer to one acknowledged request.
public enum Acknowledgement: Sendable, Equatable {
    case done
    case failed(Errno)
    /// The ack was lost (the receive queue overflowed): the request may or may not have taken effect.
    case unconfirmed
}

extension NetlinkSocket {
    /// Sends a dump request and hands every reply message to `body` until NLMSG_DONE.
    @discardableResult
    public func dump(
        _ request: some NetlinkRequest, _ body: (NetlinkMessage) -> Void
    ) throws(SystemCallError) -> DumpOutcome {
        let sequence = nextSequence()
        try send(request.serialized(sequence: sequence, portID: portID))
        var outcome = DumpOutcome()
        while true {
            for message in try receive() where message.sequence == sequence {
                if message.isDumpInterrupted { outcome.interrupted = true }
                if message.isDone || message.isError {
                    let code = message.errorCode ?? 0
                    if code != 0 { throw SystemCallError(call: request.callName, code: code, layer: layer) }
                    if message.isDone { return outcome }
                    continue
                }
                body(message)
            }
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
                throw SystemCallError(call: request.callName, code: code, layer: layer)
            }
        }
    }

    /// Sends `requests` (each asking for an ack) in batches of `batchSize` per sendto and collects
    /// every ack. One failure does not stop the rest; acks lost to a full queue come back as `.unconfirmed`.
    public func exchangeAcknowledged(
        _ requests: [some NetlinkRequest], batchSize: Int = 1024
    ) throws(SystemCallError) -> [Acknowledgement] {
        var results = [Acknowledgement](repeating: .unconfirmed, count: requests.count)
        var start = 0
        while start < requests.count {
            let end = min(start + batchSize, requests.count)
            var sequenceToIndex: [UInt32: Int] = [:]
            var buffer: [UInt8] = []
            buffer.reserveCapacity((end - start) * 96)
            for index in start..<end {
                let sequence = nextSequence()
                sequenceToIndex[sequence] = index
                requests[index].append(to: &buffer, sequence: sequence, portID: portID)
            }
            try send(buffer)
            try collectAcknowledgements(into: &results, awaiting: &sequenceToIndex)
            start = end
        }
        return results
    }

    private func collectAcknowledgements(
        into results: inout [Acknowledgement], awaiting pending: inout [UInt32: Int]
    ) throws(SystemCallError) {
        var lostSome = false
        while !pending.isEmpty {
            let messages: NetlinkMessages
            do {
                if lostSome, try !waitReadable(milliseconds: 50) { return }
                messages = try receive()
            } catch  where error.errno == .noBufferSpace {
                lostSome = true
                continue
            }
            for message in messages where message.isError {
                guard let index = pending.removeValue(forKey: message.sequence) else { continue }
                let code = message.errorCode ?? 0
                results[index] = code == 0 ? .done : .failed(Errno(rawValue: code))
            }
        }
    }
}
