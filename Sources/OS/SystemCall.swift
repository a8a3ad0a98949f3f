#if canImport(Glibc)
    import Glibc
#endif

/// The one way this code base calls into the kernel through libc: `body` returns -1 (or another
/// negative value) and leaves errno on failure. An interrupted call (EINTR) is made again; EBADF and
/// EFAULT mean this program handed the kernel a descriptor or pointer it does not own, a bug no
/// caller can handle, so they stop the program; anything else is thrown with the call's name.
/// (swift-nio's `syscall(blocking:where:)` does the same.)
@discardableResult
public func systemCall<Result: SignedInteger>(
    _ name: String, argument: @autoclosure () -> String? = nil, layer: SystemCallError.Layer = .system, _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        switch code {
        case EINTR:
            continue
        case EBADF, EFAULT:
            preconditionFailure(
                "\(SystemCallError(call: name, argument: argument(), code: code)): a descriptor or pointer this program does not own")
        default:
            throw SystemCallError(call: name, argument: argument(), code: code, layer: layer)
        }
    }
}
