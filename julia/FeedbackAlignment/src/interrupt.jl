"""
Ctrl-C from a host process, noticed between batches.

A host that embeds Julia keeps its own SIGINT handler (Julia runs with `--handle-signals=no`), and
that handler only runs once the host gets control back: a long `train_epoch!` would finish first.
Python's handler also writes the signal's number, at once, to the descriptor given to
`signal.set_wakeup_fd`. The host makes that descriptor one end of a non-blocking socket pair and
hands the other end to `watch_interrupts!`; `interrupted()` then peeks at it (one `recv` with
`MSG_PEEK`, nothing consumed: the host drains it) at batch boundaries, at most every 5 ms: the
`recv` costs about a microsecond, as much as a whole batch of one sample in a small network, while
reading the clock costs ~25 ns.
"""

"""
    Interrupted(epoch, batch)

The host asked to stop (SIGINT) and the work stopped at a batch boundary: training before batch
`batch` of epoch `epoch` (the parameters are those after the batch before it; no update is half
applied), or, when `epoch == 0`, between chunks of a forward pass (nothing changed).
"""
struct Interrupted <: Exception
    epoch::Int
    batch::Int
end

function Base.showerror(io::IO, e::Interrupted)
    if e.epoch == 0
        print(io, "interrupted (SIGINT); the model was not changed")
    else
        print(io, "interrupted (SIGINT) at epoch $(e.epoch) before batch $(e.batch): the parameters are those ",
              "after batch $(e.batch - 1) of that epoch; epochs trained so far: $(e.epoch - 1)")
    end
end

const INTERRUPT_FD = Ref{Cint}(-1)            # the socket end to peek at; -1: not watching
const SIGNAL_BYTES = zeros(UInt8, 256)        # peeked signal numbers, one byte each
const SIGINT_NUMBER = 0x02                    # SIGINT is 2 on every POSIX system
const MSG_PEEK = Cint(2)                      # likewise on Linux, macOS and the BSDs
const MSG_DONTWAIT = Sys.islinux() ? Cint(0x40) : Cint(0x80)   # never block, even on a blocking socket
const PEEK_INTERVAL_NS = UInt64(5_000_000)    # at most 200 peeks a second
const NEXT_PEEK = Ref{UInt64}(0)              # time_ns() before which interrupted() does not peek

"Peek at `fd` between batches for a SIGINT byte (-1: stop watching)."
watch_interrupts!(fd::Integer) = (INTERRUPT_FD[] = fd; nothing)

"True when a SIGINT has been written to the watched descriptor and not yet drained by the host."
function interrupted()
    fd = INTERRUPT_FD[]
    fd < 0 && return false
    now = time_ns()
    now < NEXT_PEEK[] && return false
    NEXT_PEEK[] = now + PEEK_INTERVAL_NS
    n = ccall(:recv, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Cint),
              fd, SIGNAL_BYTES, length(SIGNAL_BYTES), MSG_PEEK | MSG_DONTWAIT)
    for i in 1:n                               # n <= 0: nothing there (or not a socket)
        @inbounds SIGNAL_BYTES[i] == SIGINT_NUMBER && return true
    end
    return false
end

"Throw `Interrupted(epoch, batch)` if the host asked to stop; call where stopping leaves a whole state."
throw_if_interrupted(epoch::Integer=0, batch::Integer=0) = interrupted() && throw(Interrupted(epoch, batch))
