# Ctrl-C from a host (src/interrupt.jl): a SIGINT byte on the watched socket stops training before
# the next batch and a forward pass before the next chunk; nothing else does.

@testset "interrupts from a host" begin
    fds = zeros(Cint, 2)   # a socket pair, as Python makes one: Julia peeks at fds[1], the host writes fds[2]
    @test ccall(:socketpair, Cint, (Cint, Cint, Cint, Ptr{Cint}), 1, 1, 0, fds) == 0   # AF_UNIX, SOCK_STREAM
    send(byte) = ccall(:write, Cssize_t, (Cint, Ref{UInt8}, Csize_t), fds[2], byte, 1)
    drain() = ccall(:recv, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Cint), fds[1], zeros(UInt8, 64), 64, 0x40)   # MSG_DONTWAIT (Linux)
    X = reshape(collect(range(-1.0, 1.0; length=40)), 4, 10)
    y = [mod1(j, 3) for j in 1:10]
    net = Network([4, 5, 3]; rule=FA(), seed=1, T=Float64)
    W = copy(net.layers[1].W)
    try
        FAL.watch_interrupts!(fds[1])
        @test send(0x11) == 1                       # SIGCHLD, say: not a reason to stop
        FAL.NEXT_PEEK[] = 0
        train_epoch!(net, X, y, SGD(0.1); batchsize=5)
        @test net.epochs == 1 && net.layers[1].W != W
        drain()
        @test send(0x02) == 1                       # SIGINT
        FAL.NEXT_PEEK[] = 0
        W = copy(net.layers[1].W)
        e = try train_epoch!(net, X, y, SGD(0.1); batchsize=5); nothing catch err; err end
        @test e isa FAL.Interrupted && (e.epoch, e.batch) == (2, 1)
        @test net.epochs == 1 && net.layers[1].W == W   # stopped before batch 1: nothing applied
        @test occursin("before batch 1", sprint(showerror, e))
        FAL.NEXT_PEEK[] = 0
        @test_throws FAL.Interrupted predict(net, X)
        FAL.NEXT_PEEK[] = 0
        @test CABI.guarded(() -> FAL.throw_if_interrupted(2, 1)) == 3   # the C ABI's status for it
        drain()
        FAL.NEXT_PEEK[] = 0
        @test length(predict(net, X)) == 10         # drained by the host: carries on
    finally
        FAL.watch_interrupts!(-1)
        ccall(:close, Cint, (Cint,), fds[1]); ccall(:close, Cint, (Cint,), fds[2])
    end
end
