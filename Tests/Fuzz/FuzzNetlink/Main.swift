import FuzzHarness

// Built with `make fuzz` (SwiftPM's --sanitize=fuzzer and -DFUZZING), libFuzzer drives the target
// FUZZ_TARGET names; in the everyday build the same targets replay files, so they keep compiling.
#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        FuzzHarness.run(NetlinkTargets.all, UnsafeBufferPointer(start: data, count: size))
    }
#else
    @main
    enum Replay {
        static func main() { FuzzHarness.replay(NetlinkTargets.all) }
    }
#endif
