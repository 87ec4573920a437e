# A small workload run while the package precompiles, so that the inferred code for the common
# networks (tanh, every rule, both losses, Float32 and Float64, driven as the C ABI drives them)
# is cached and a new process reaches its first training step sooner.
let
    for T in (Float32, Float64), rule in (BP(), FA(), DFA()), loss in (CrossEntropy(), MSE())
        net = Network([3, 4, 4, 2]; activation=tanh, rule=rule, loss=loss, T=T)
        X = ones(T, 3, 5)
        Y = loss isa CrossEntropy ? ZeroBasedLabels(Int64[0, 1, 0, 1, 0]) : ones(T, 2, 5)
        train_epoch!(net, X, Y, SGD(0.01); batchsize=2)
        train_epoch!(net, X, Y, SGD(0.01, 0.9); batchsize=2, shuffle=false)
        step!(net, X, Y, SGD(0.01))
        evaluate(net, X, Y)
        gradients!(net.grads, net, X, Y)
        outputs!(similar(X, 2, 5), net, X)
        if loss isa CrossEntropy
            predict_proba!(similar(X, 2, 5), net, X)
            predict_labels!(zeros(Int64, 5), net, X; offset=-1)
        end
    end
end
