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
