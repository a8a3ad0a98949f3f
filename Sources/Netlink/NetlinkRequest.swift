import OS

/// A request that serializes itself; the socket adds sequence numbers and batches.
public protocol NetlinkRequest: Sendable {
    var messageType: UInt16 { get }
    var flags: UInt16 { get }
    /// Which request this is, by type: errors carry it, and name it as the kernel headers spell it.
    var netlinkOperation: NetlinkOperation { get }
    /// What errors add to the operation's name where one message type does two things ("filtered flush").
    var operationDetail: String? { get }
    func writePayload(into writer: inout NetlinkMessageWriter)
}

extension NetlinkRequest {
    public var operationDetail: String? { nil }

    /// The kernel's refusal of this request.
    public func failure(code: Int32) -> SystemCallError {
        SystemCallError(netlinkOperation, code: code, detail: operationDetail)
    }

    public func serialized(sequence: UInt32, portID: UInt32 = 0) -> [UInt8] {
        var writer = NetlinkMessageWriter(type: messageType, flags: flags, sequence: sequence, portID: portID)
        writePayload(into: &writer)
        return writer.finish()
    }

    /// Appends this request to a batch buffer. Each message is written on its own and copied once:
    /// handing the batch buffer itself to a writer made every message copy the whole batch.
    public func append(to buffer: inout [UInt8], sequence: UInt32, portID: UInt32 = 0) {
        buffer.append(contentsOf: serialized(sequence: sequence, portID: portID))
    }
}
