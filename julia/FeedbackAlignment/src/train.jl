"""
    DivergenceError(loss, epoch, batch, layer = 0, array = "")

Training stopped because a batch loss was NaN or Inf (`layer` 0), or because the update of `layer`'s
`array` ("W", "b" or "B") would have made it NaN or Inf. Either way nothing of that batch was applied:
the parameters keep the values they had before it. `epoch` and `batch` count from 1 (0 when the
batch was a lone `step!`).
"""
struct DivergenceError <: Exception
    loss::Float64
    epoch::Int
    batch::Int
    layer::Int
    array::String
end
DivergenceError(loss, epoch, batch) = DivergenceError(loss, epoch, batch, 0, "")
at_batch(e::DivergenceError, epoch, batch) = DivergenceError(e.loss, epoch, batch, e.layer, e.array)

function Base.showerror(io::IO, e::DivergenceError)
    where = e.epoch == 0 ? "on this batch" : "at epoch $(e.epoch), batch $(e.batch)"
    what = e.layer == 0 ? "the loss became $(e.loss)" : "the update of layer $(e.layer)'s $(e.array) became NaN or Inf"
    print(io, "training diverged: $what $where; ",
          "the parameters are those from before that batch. Try a smaller learning rate.")
end

"""
    step!(net, X, Y, optimiser) -> loss

One update on the batch (X, Y): forward, the rule's backward pass, and the optimiser step.
Returns the batch's mean loss before the update. X of another element type is converted once.
"""
function step!(net::Network{T}, X, Y, opt::Optimiser) where {T}
    X = as_input(net, X)
    check_inputs(net, X)
    m = nobs(X)
    check_targets(net.loss, Y, outsize(net), m)
    check_training_batch(net, m)
    workspace!(net, m)
    before_batch!(net.rule, net)
    total, _ = loss_and_grads!(net, X, Y, TRAIN)
    loss = total / m
    isfinite(loss) || throw(DivergenceError(loss, 0, 0))
    update!(net, opt)
    return loss
end

"""
    train_epoch!(net, X, Y, optimiser; batchsize=32, shuffle=true, observe=nothing) -> (loss = ..., accuracy = ...)

One pass over (X, Y) in minibatches, shuffled with the network's own generator. Returns the mean
training loss and accuracy over the epoch's batches (each measured before its update).
`observe(net, Xb, Yb, epoch, batch)`, if given, is called after each batch's backward pass and
before its update (e.g. an `AlignmentTracker`).
"""
function train_epoch!(net::Network{T}, X, Y, opt::Optimiser;
                      batchsize::Integer=32, shuffle::Bool=true, observe=nothing) where {T}
    X = as_input(net, X)
    check_inputs(net, X)
    n = nobs(X)
    check_targets(net.loss, Y, outsize(net), n)
    batchsize >= 1 || throw(ArgumentError("batchsize must be at least 1, got $batchsize"))
    check_training_batch(net, min(batchsize, n))
    n % batchsize == 0 || check_training_batch(net, n % batchsize)   # the epoch's last batch
    workspace!(net, min(batchsize, n))
    order = net.order
    resize!(order, n)
    order .= 1:n
    shuffle && shuffle!(net.rng, order)
    epoch = net.epochs + 1
    total, correct = 0.0, 0
    for (batch, start) in enumerate(1:batchsize:n)
        throw_if_interrupted(epoch, batch)   # Ctrl-C from the host: stop between whole batches
        cols = start:min(start + batchsize - 1, n)
        Xb, Yb = gather!(net, X, Y, view(order, cols))   # `order` is 1:n when not shuffling
        before_batch!(net.rule, net)
        t, c = loss_and_grads!(net, Xb, Yb, TRAIN)
        isfinite(t) || throw(DivergenceError(t / length(cols), epoch, batch))
        observe === nothing || observe(net, Xb, Yb, epoch, batch)
        try
            update!(net, opt)
        catch e
            e isa DivergenceError ? throw(at_batch(e, epoch, batch)) : rethrow()
        end
        total += t
        correct += c
    end
    net.epochs = epoch
    return (loss = total / n, accuracy = net.loss isa CrossEntropy ? correct / n : NaN)
end

# A batch that a layer cannot train on (batch norm needs two values per channel) is refused before
# any work, rather than half way through an epoch.
function check_training_batch(net::Network, m)
    all_layers(st -> m >= st.min_batch, net.layers) && return
    st = net.layers[findfirst(st -> m < st.min_batch, net.layers)]
    throw(ArgumentError("layer $(st.path), $(layer_text(st.layer)) needs more than one value per channel in training: " *
                        "batches of at least $(st.min_batch) observations, but one has $m"))
end

# Copy the observations `idx` of (X, Y) into the network's batch buffers, as plain loops: in
# Julia 1.5 a `copyto!` between views allocates.
function gather!(net::Network{T}, X::Array{T}, Y, idx) where {T}
    Xb = batch(net, length(idx)).X
    per = length(X) ÷ nobs(X)
    @inbounds for (j, c) in enumerate(idx)
        offset, from = (j - 1) * per, (c - 1) * per
        @simd for i in 1:per
            Xb[offset+i] = X[from+i]
        end
    end
    return Xb, gather_targets!(batch(net, length(idx)), Y, idx)
end

function gather_targets!(b::InputBuffers, y::AbstractVector, idx)
    yb = b.labels
    @inbounds for (j, c) in enumerate(idx)
        yb[j] = y[c]
    end
    return yb
end

function gather_targets!(b::InputBuffers, Y::AbstractMatrix, idx)
    Yb = b.targets
    @inbounds for (j, c) in enumerate(idx), i in axes(Y, 1)
        Yb[i, j] = Y[i, c]
    end
    return Yb
end

"""
    learn!(net, X, Y; epochs=1, batchsize=32, optimizer=net's own, shuffle=true,
           validation=nothing, verbose=false, observe=nothing) -> history

Train for `epochs` passes over (X, Y) (observations last: features x observations, or width x
height x channels x observations; class labels 1..K, or targets outputs x observations for MSE).
Returns one named tuple per epoch with the epoch number, the training loss and accuracy and, given
`validation = (Xv, Yv)`, the validation loss and accuracy. `observe` is passed on to `train_epoch!`.

Without `optimizer`, training continues with the network's own (`net.optimizer`): the one the last
`learn!` used, or the one a model file recorded (`load`; its state, such as momentum, carries on);
a new network starts with `SGD(0.01)`. As Python's `Network.fit`.
"""
function learn!(net::Network{T}, X, Y; epochs::Integer=1, batchsize::Integer=32,
                optimizer::Optimiser=something(net.optimizer, SGD(0.01)), shuffle::Bool=true, validation=nothing,
                verbose::Bool=false, observe=nothing) where {T}
    epochs >= 1 || throw(ArgumentError("epochs must be at least 1, got $epochs"))
    net.optimizer = optimizer
    X = as_input(net, X)
    validation === nothing || (validation = (as_input(net, validation[1]), validation[2]))
    history = NamedTuple{(:epoch, :loss, :accuracy, :val_loss, :val_accuracy),Tuple{Int,Float64,Float64,Float64,Float64}}[]
    for _ in 1:epochs
        train = train_epoch!(net, X, Y, optimizer; batchsize=batchsize, shuffle=shuffle, observe=observe)
        val = validation === nothing ? (loss = NaN, accuracy = NaN) : evaluate(net, validation...)
        push!(history, (epoch = net.epochs, loss = train.loss, accuracy = train.accuracy,
                        val_loss = val.loss, val_accuracy = val.accuracy))
        verbose && println("epoch ", net.epochs, ": ", history[end])
    end
    return history
end
