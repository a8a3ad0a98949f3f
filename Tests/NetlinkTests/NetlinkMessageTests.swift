import Netlink
import Testing

@Suite struct NetlinkMessageTests {
    func errorMessage(sequence: UInt32, errno: Int32) -> [UInt8] {
        var writer = NetlinkMessageWriter(type: 2, flags: 0x100, sequence: sequence)  // NLMSG_ERROR, capped
        writer.append(hostOrder: -errno)
        writer.append([UInt8](repeating: 0, count: 16))
        return writer.finish()
    }

    @Test func splitsADatagramAndReadsErrors() {
        let datagram = errorMessage(sequence: 1, errno: 0) + errorMessage(sequence: 2, errno: 2) + errorMessage(sequence: 3, errno: 1)
        let messages = Array(NetlinkMessages(datagram: datagram))
        #expect(messages.map(\.sequence) == [1, 2, 3])
        #expect(messages.map { $0.errorCode } == [0, 2, 1])
        #expect(messages.allSatisfy { $0.isError })
    }

    @Test func stopsAtATruncatedMessage() {
        var datagram = errorMessage(sequence: 1, errno: 0) + errorMessage(sequence: 2, errno: 0)
        datagram.removeLast(8)
        #expect(Array(NetlinkMessages(datagram: datagram)).count == 1)
        #expect(Array(NetlinkMessages(datagram: [1, 0, 0])).isEmpty)
    }

    /// Found by the datagram fuzz target: a last message whose length is not a multiple of 4 and
    /// is not padded moved the cursor past the end, and the next read trapped.
    @Test func endsAtAnUnpaddedLastMessage() {
        var datagram = errorMessage(sequence: 1, errno: 0)
        datagram.append(0x63)
        datagram.replaceSubrange(0..<4, with: [UInt8(datagram.count), 0, 0, 0])
        let messages = Array(NetlinkMessages(datagram: datagram))
        #expect(messages.map(\.sequence) == [1])
        #expect(messages.first?.raw.count == 37)
    }

    /// The same for attributes: an unpadded last attribute (a truncated string, say) ends the walk.
    @Test func endsAtAnUnpaddedLastAttribute() {
        let bytes: [UInt8] = [8, 0, 1, 0, 1, 2, 3, 4, 5, 0, 2, 0, 0x41]
        let attributes = Array(NetlinkAttributes(bytes[...]))
        #expect(attributes.map(\.type) == [1, 2])
        #expect(Array(attributes[1].value) == [0x41])
        #expect(Array(NetlinkAttributes(bytes[4...])).isEmpty)
    }

    /// Found by the datagram fuzz target: an error of Int32.min has no positive errno, and
    /// negating it trapped (arithmetic overflow).
    @Test func anErrorOfInt32MinReadsWithoutTrapping() {
        var writer = NetlinkMessageWriter(type: 2, flags: 0, sequence: 1)  // NLMSG_ERROR
        writer.append(hostOrder: Int32.min)
        writer.append([UInt8](repeating: 0, count: 16))
        let message = Array(NetlinkMessages(datagram: writer.finish()))[0]
        #expect(message.errorCode != 0)
    }

    @Test func doneCarriesTheDumpsErrorAndInterruptedFlag() {
        var writer = NetlinkMessageWriter(type: 3, flags: 0x12, sequence: 4)  // NLMSG_DONE, MULTI|DUMP_INTR
        writer.append(hostOrder: Int32(-16))
        let message = Array(NetlinkMessages(datagram: writer.finish()))[0]
        #expect(message.isDone)
        #expect(message.isDumpInterrupted)
        #expect(message.errorCode == 16)
    }

    func entry(sequence: UInt32, flags: UInt16 = 0x2) -> [UInt8] {
        var writer = NetlinkMessageWriter(type: 20, flags: flags, sequence: sequence)  // SOCK_DIAG_BY_FAMILY, MULTI
        writer.append([UInt8](repeating: 0, count: 8))
        return writer.finish()
    }

    func done(sequence: UInt32, flags: UInt16 = 0x2, errno: Int32 = 0) -> [UInt8] {
        var writer = NetlinkMessageWriter(type: 3, flags: flags, sequence: sequence)
        writer.append(hostOrder: -errno)
        return writer.finish()
    }

    @Test func aDumpRunTakesOnlyItsOwnEntriesUntilDone() {
        var replies = DumpReplies(sequence: 7)
        var seen: [UInt32] = []
        // An overrun earlier run (sequence 6) still delivering: its entries are not this run's.
        replies.take(NetlinkMessages(datagram: entry(sequence: 6) + entry(sequence: 7) + entry(sequence: 7))) { seen.append($0.sequence) }
        #expect(!replies.finished)
        replies.take(NetlinkMessages(datagram: done(sequence: 6) + entry(sequence: 7) + done(sequence: 7) + entry(sequence: 7))) {
            seen.append($0.sequence)
        }
        #expect(seen == [7, 7, 7])
        #expect(replies.finished && replies.errorCode == 0 && !replies.interrupted)
    }

    @Test func aDumpRunFlaggedInterruptedAnywhereIsInterrupted() {
        var replies = DumpReplies(sequence: 1)
        var count = 0
        // NLM_F_DUMP_INTR (0x10) on one entry in the middle, as the kernel sets it once the table changed.
        let datagram = entry(sequence: 1) + entry(sequence: 1, flags: 0x12) + entry(sequence: 1) + done(sequence: 1)
        replies.take(NetlinkMessages(datagram: datagram)) { _ in count += 1 }
        #expect(count == 3)
        #expect(replies.finished && replies.interrupted)
    }

    @Test func aDumpRunEndsWithTheErrnoItsDoneOrErrorCarries() {
        var replies = DumpReplies(sequence: 2)
        replies.take(NetlinkMessages(datagram: done(sequence: 2, errno: 105))) { _ in }  // ENOBUFS
        #expect(replies.finished && replies.errorCode == 105)
        var refused = DumpReplies(sequence: 3)
        refused.take(NetlinkMessages(datagram: errorMessage(sequence: 3, errno: 1))) { _ in }  // EPERM
        #expect(refused.finished && refused.errorCode == 1)
        var acked = DumpReplies(sequence: 4)
        acked.take(NetlinkMessages(datagram: errorMessage(sequence: 4, errno: 0))) { _ in }  // a plain ack ends nothing
        #expect(!acked.finished)
    }

    @Test func aQuietBatchIsSettledByItsFenceAndWhatDidNotFailBeforeItSucceeded() {
        // Requests 10-13 at indexes 0-3; only 13 asked for an ack. 11 failed (ENOENT), and an
        // unrelated message (sequence 99) is no request of this batch.
        var answers = BatchAnswers(pending: [10: 0, 11: 1, 12: 2, 13: 3], fence: 13)
        var results = [Acknowledgement](repeating: .unconfirmed, count: 4)
        answers.take(NetlinkMessages(datagram: errorMessage(sequence: 11, errno: 2) + errorMessage(sequence: 99, errno: 0)), into: &results)
        #expect(!answers.settled)
        #expect(results == [.unconfirmed, .failed(.noSuchFileOrDirectory), .unconfirmed, .unconfirmed])
        answers.take(NetlinkMessages(datagram: errorMessage(sequence: 13, errno: 0)), into: &results)
        #expect(answers.settled)
        #expect(results == [.done, .failed(.noSuchFileOrDirectory), .done, .done])
    }

    @Test func aQuietBatchThatLostAnswersConfirmsOnlyWhatAnswered() {
        // ENOBUFS before the fence: a failure may have been dropped, so silence proves nothing.
        var answers = BatchAnswers(pending: [1: 0, 2: 1, 3: 2], fence: 3)
        var results = [Acknowledgement](repeating: .unconfirmed, count: 3)
        answers.noteLoss()
        answers.take(NetlinkMessages(datagram: errorMessage(sequence: 2, errno: 1) + errorMessage(sequence: 3, errno: 0)), into: &results)
        #expect(answers.settled)
        #expect(results == [.unconfirmed, .failed(.notPermitted), .done])
    }

    @Test func aBatchWithoutFenceWaitsForEveryAnswer() {
        var answers = BatchAnswers(pending: [5: 0, 6: 1])
        var results = [Acknowledgement](repeating: .unconfirmed, count: 2)
        answers.take(NetlinkMessages(datagram: errorMessage(sequence: 6, errno: 0)), into: &results)
        #expect(!answers.settled && results == [.unconfirmed, .done])
        answers.take(NetlinkMessages(datagram: errorMessage(sequence: 5, errno: 0)), into: &results)
        #expect(answers.settled && results == [.done, .done])
    }

    @Test func writesNestedAttributesWithLengthsAndAlignment() {
        var writer = NetlinkMessageWriter(type: 1, flags: 0, sequence: 0)
        writer.appendNested(type: 1) { nested in
            nested.appendAttribute(type: 2, value: [7])
        }
        let bytes = writer.finish()
        #expect(bytes.count == 16 + 12)
        #expect(Array(bytes[16...]) == [12, 0, 1, 0x80, 5, 0, 2, 0, 7, 0, 0, 0])
        let attributes = Array(NetlinkAttributes(bytes[16...]))
        #expect(attributes.count == 1)
        #expect(attributes[0].type == 1)
        #expect(Array(attributes[0].nested[2]?.value ?? []) == [7])
    }

    @Test func byteReaderRefusesShortReads() {
        let reader = ByteReader([1, 2, 3][...])
        #expect(reader.hostOrder(UInt16.self, at: 1) == 0x0302)
        #expect(reader.networkOrder(UInt16.self, at: 0) == 0x0102)
        #expect(reader.hostOrder(UInt32.self, at: 0) == nil)
        #expect(reader.slice(at: 2, count: 2) == nil)
    }
}
