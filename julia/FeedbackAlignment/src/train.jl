"""
    DivergenceError(loss, epoch, batch)

Training stopped because a batch loss was NaN or Inf; the parameters keep the values they had
before that batch. `epoch` and `batch` count from 1 (0 when the batch was a lone `step!`).
"""
struct DivergenceError <: Exception
    loss::Float64
    epoch::Int
    batch::Int
end

function Base.showerror(io::IO, e::DivergenceError)
    where = e.epoch == 0 ? "on this batch" : "at epoch $(e.epoch), batch $(e.batch)"
    print(io, "training diverged: the loss became $(e.loss) $where; ",
          "the parameters are those from before that batch. Try a smaller learning rate.")
end

"""
    step!(net, X, Y, optimiser) -> loss

One update on the batch (X, Y): forward, the rule's backward pass, and the optimiser step.
Returns the batch's mean loss before the update.
"""
function step!(net::Network{T}, X::AbstractMatrix{T}, Y, opt::Optimiser) where {T}
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), size(X, 2))
    workspace!(net, size(X, 2))
    before_batch!(net.rule, net)
    total, _ = loss_and_grads!(net.grads, net, X, Y, true)
    loss = total / size(X, 2)
    isfinite(loss) || throw(DivergenceError(loss, 0, 0))
    update!(net, opt, net.grads)
    return loss
end

"""
    train_epoch!(net, X, Y, optimiser; batchsize=32, shuffle=true, observe=nothing) -> (loss = ..., accuracy = ...)

One pass over (X, Y) in minibatches, shuffled with the network's own generator. Returns the mean
training loss and accuracy over the epoch's batches (each measured before its update).
`observe(net, Xb, Yb, epoch, batch)`, if given, is called after each batch's backward pass and
before its update (e.g. an `AlignmentTracker`).
"""
function train_epoch!(net::Network{T}, X::AbstractMatrix{T}, Y, opt::Optimiser;
                      batchsize::Integer=32, shuffle::Bool=true, observe=nothing) where {T}
    check_inputs(net, X)
    n = size(X, 2)
    check_targets(net.loss, Y, outsize(net), n)
    batchsize >= 1 || throw(ArgumentError("batchsize must be at least 1, got $batchsize"))
    ws = workspace!(net, min(batchsize, n))
    order = ws.order
    resize!(order, n)
    order .= 1:n
    shuffle && shuffle!(net.rng, order)
    epoch = net.epochs + 1
    total, correct = 0.0, 0
    for (batch, start) in enumerate(1:batchsize:n)
        throw_if_interrupted(epoch, batch)   # Ctrl-C from the host: stop between whole batches
        cols = start:min(start + batchsize - 1, n)
        Xb, Yb = gather!(ws, X, Y, view(order, cols))   # `order` is 1:n when not shuffling
        before_batch!(net.rule, net)
        t, c = loss_and_grads!(net.grads, net, Xb, Yb, true)
        isfinite(t) || throw(DivergenceError(t / length(cols), epoch, batch))
        observe === nothing || observe(net, Xb, Yb, epoch, batch)
        update!(net, opt, net.grads)
        total += t
        correct += c
    end
    net.epochs = epoch
    return (loss = total / n, accuracy = net.loss isa CrossEntropy ? correct / n : NaN)
end

# Copy the observations `idx` of (X, Y) into the workspace's batch buffers, as plain loops: in
# Julia 1.5 a `copyto!` between column views allocates.
function gather!(ws::Workspace{T}, X::AbstractMatrix{T}, Y, idx) where {T}
    Xb = columns(ws, length(idx)).X
    @inbounds for (j, c) in enumerate(idx)
        @simd for i in axes(Xb, 1)
            Xb[i, j] = X[i, c]
        end
    end
    return Xb, gather_targets!(ws, Y, idx)
end

function gather_targets!(ws::Workspace, y::AbstractVector, idx)
    yb = columns(ws, length(idx)).labels
    @inbounds for (j, c) in enumerate(idx)
        yb[j] = y[c]
    end
    return yb
end

function gather_targets!(ws::Workspace, Y::AbstractMatrix, idx)
    Yb = columns(ws, length(idx)).targets
    @inbounds for (j, c) in enumerate(idx), i in axes(Y, 1)
        Yb[i, j] = Y[i, c]
    end
    return Yb
end

"""
    learn!(net, X, Y; epochs=1, batchsize=32, optimizer=SGD(0.01), shuffle=true,
           validation=nothing, verbose=false, observe=nothing) -> history

Train for `epochs` passes over (X, Y) (features x observations; class labels 1..K, or targets
outputs x observations for MSE). Returns one named tuple per epoch with the training loss and
accuracy and, given `validation = (Xv, Yv)`, the validation loss and accuracy. `observe` is passed
on to `train_epoch!`.
"""
function learn!(net::Network{T}, X::AbstractMatrix, Y; epochs::Integer=1, batchsize::Integer=32,
                optimizer::Optimiser=SGD(0.01), shuffle::Bool=true, validation=nothing,
                verbose::Bool=false, observe=nothing) where {T}
    epochs >= 1 || throw(ArgumentError("epochs must be at least 1, got $epochs"))
    X = convert(AbstractMatrix{T}, X)
    validation === nothing || (validation = (convert(AbstractMatrix{T}, validation[1]), validation[2]))
    history = NamedTuple{(:epoch, :loss, :accuracy, :val_loss, :val_accuracy),NTuple{5,Float64}}[]
    for _ in 1:epochs
        train = train_epoch!(net, X, Y, optimizer; batchsize=batchsize, shuffle=shuffle, observe=observe)
        val = validation === nothing ? (loss = NaN, accuracy = NaN) : evaluate(net, validation...)
        push!(history, (epoch = net.epochs, loss = train.loss, accuracy = train.accuracy,
                        val_loss = val.loss, val_accuracy = val.accuracy))
        verbose && println("epoch ", net.epochs, ": ", history[end])
    end
    return history
end
