#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

import Dispatch
import Synchronization

/// Blocks until SIGTERM or SIGINT arrives, then returns the signal number.
public func waitForTerminationSignal() -> Int32 {
    let received = DispatchSemaphore(value: 0)
    let which = Mutex<Int32>(0)
    var sources: [any DispatchSourceSignal] = []
    for sig in [SIGTERM, SIGINT] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            which.withLock { $0 = sig }
            received.signal()
        }
        source.resume()
        sources.append(source)
    }
    received.wait()
    for source in sources { source.cancel() }
    return which.withLock { $0 }
}

/// Watches the parent: when `parent` is gone (this process was re-parented), raises SIGTERM,
/// so the process stops as it does on a normal stop. A supervisor killed with SIGKILL thus
/// leaves no child behind.
public func terminateWhenOrphaned(parent: Int32) {
    startThread {
        while getppid() == parent { usleep(200_000) }
        kill(getpid(), SIGTERM)
    }
}
