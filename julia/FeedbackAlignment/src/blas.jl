# Matrix products. Every GEMM of training goes through `gemm!`, so the BLAS behind it is chosen here.

# A faster BLAS the host already has loaded: from Python that is NumPy's OpenBLAS (0.3.2x-0.3.3x
# against Julia 1.5's 0.3.9; 1.1-1.9x faster on 1000-wide layers here, bench/breakdown.jl). The host
# hands over the Fortran `sgemm`/`dgemm` with 64-bit integers (`scipy_sgemm_64_`, ...). C_NULL, the
# default, keeps Julia's own BLAS. One choice per process, like `BLAS.set_num_threads`.
const EXTERNAL_SGEMM = Ref{Ptr{Cvoid}}(C_NULL)
const EXTERNAL_DGEMM = Ref{Ptr{Cvoid}}(C_NULL)
const EXTERNAL_THREADS = Ref{Ptr{Cvoid}}(C_NULL)   # its `int get_num_threads(void)`, if it has one
external_gemm(::Type{Float32}) = EXTERNAL_SGEMM[]
external_gemm(::Type{Float64}) = EXTERNAL_DGEMM[]
external_gemm(::Type) = C_NULL

"""
    use_external_blas!(sgemm, dgemm, get_num_threads = C_NULL)

Route the package's matrix products through these ILP64 Fortran `sgemm`/`dgemm` functions
(addresses); `C_NULL` for both goes back to Julia's BLAS. `get_num_threads`, the address of that
BLAS's thread count, lets the package split products over its own threads while the BLAS is serial
(without it the package never does, see `blas_threads`).
"""
function use_external_blas!(sgemm::Ptr{Cvoid}, dgemm::Ptr{Cvoid}, get_num_threads::Ptr{Cvoid}=C_NULL)
    (sgemm == C_NULL) == (dgemm == C_NULL) || throw(ArgumentError("give both sgemm and dgemm, or neither"))
    EXTERNAL_SGEMM[], EXTERNAL_DGEMM[] = sgemm, dgemm
    EXTERNAL_THREADS[] = sgemm == C_NULL ? C_NULL : get_num_threads
    return nothing
end

"""
    blas_threads() -> Int

The threads of the BLAS behind `gemm!`: Julia's OpenBLAS, or the external one (0 when it cannot
say). Only while it is 1 do the package's kernels and products use Julia's threads (threads.jl).
"""
function blas_threads()
    EXTERNAL_SGEMM[] == C_NULL && return own_blas_threads()
    f = EXTERNAL_THREADS[]
    return f == C_NULL ? 0 : Int(ccall(f, Cint, ()))
end
@static if isdefined(BLAS, :get_num_threads)
    own_blas_threads() = BLAS.get_num_threads()
else
    own_blas_threads() = Int(ccall((:openblas_get_num_threads64_, Base.libblas_name), Cint, ()))
end

"""
    gemm!(C, tA, A, tB, B, alpha = 1, beta = 0)

C = alpha * op(A) * op(B) + beta * C, op being transpose for 'T'. Dense float matrices go to BLAS
directly through `gemm_ptr!` (the external one if set): Julia 1.5's generic `mul!` costs about a
second of compilation per combination of view types, which a new process pays at its first
training step. Anything else takes the generic `mul!`.
"""
function gemm!(C::StridedMatrix{T}, tA::Char, A::StridedMatrix{T}, tB::Char, B::StridedMatrix{T},
               alpha=one(T), beta=zero(T)) where {T<:LinearAlgebra.BlasFloat}
    stride(A, 1) == stride(B, 1) == stride(C, 1) == 1 || return generic_gemm!(C, tA, A, tB, B, alpha, beta)
    T <: Union{Float32,Float64} || return BLAS.gemm!(tA, tB, T(alpha), A, B, T(beta), C)   # complex
    m, k = tA == 'N' ? size(A) : reverse(size(A))
    kB, n = tB == 'N' ? size(B) : reverse(size(B))
    k == kB && size(C) == (m, n) ||
        throw(DimensionMismatch("gemm!: C is $(size(C)), op(A) is ($m, $k), op(B) is ($kB, $n)"))
    lda, ldb, ldc = max(1, stride(A, 2)), max(1, stride(B, 2)), max(1, stride(C, 2))
    p = nparts(NS_MULADD * sizeof(T) / 4 * m * n * k)
    GC.@preserve A B C if p == 1
        gemm_ptr!(tA, tB, m, n, k, T(alpha), pointer(A), lda, pointer(B), ldb, T(beta), pointer(C), ldc)
    else
        split_gemm!(tA, tB, m, n, k, T(alpha), pointer(A), lda, pointer(B), ldb, T(beta), pointer(C), ldc, p)
    end
    return C
end

# A product on several threads: C cut along its longer side into `p` blocks, one serial BLAS call
# each. Block edges fall on multiples of 16, so each block keeps the BLAS's full-width
# micro-kernels. An element of C is computed the same way whatever the block, but the BLAS may pick
# other kernels for other block sizes, so 1 and p threads may differ by rounding.
@noinline function split_gemm!(tA, tB, m, n, k, alpha::T, A::Ptr{T}, lda, B::Ptr{T}, ldb, beta::T, C::Ptr{T}, ldc,
                               p) where {T}
    s, columns = sizeof(T), n >= m   # columns of C and op(B), else rows of C and op(A)
    len = columns ? n : m
    threaded_parts(1:cld(len, 16), p) do blocks
        isempty(blocks) && return
        lo, hi = 16 * (first(blocks) - 1), min(len, 16 * last(blocks))
        if columns
            gemm_ptr!(tA, tB, m, hi - lo, k, alpha, A, lda, B + s * lo * (tB == 'N' ? ldb : 1), ldb,
                      beta, C + s * lo * ldc, ldc)
        else
            gemm_ptr!(tA, tB, hi - lo, n, k, alpha, A + s * lo * (tA == 'N' ? 1 : lda), lda, B, ldb,
                      beta, C + s * lo, ldc)
        end
    end
    return nothing
end
gemm!(C, tA::Char, A, tB::Char, B, alpha=true, beta=false) = generic_gemm!(C, tA, A, tB, B, alpha, beta)
generic_gemm!(C, tA, A, tB, B, alpha, beta) =
    mul!(C, tA == 'T' ? transpose(A) : A, tB == 'T' ? transpose(B) : B, alpha, beta)

"""
    gemm_ptr!(tA, tB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)

The Fortran GEMM on raw pointers, column-major: C (m x n, leading dimension ldc) =
alpha * op(A) * op(B) + beta * C, with op(A) m x k and op(B) k x n. Goes to the external BLAS if
one is set, else to Julia's own OpenBLAS symbol. For products on parts of larger arrays (one sample
of a batch) without wrapping or viewing them, which allocates in Julia 1.5. The caller keeps the
memory alive (`GC.@preserve`) and gives leading dimensions >= 1.
"""
function gemm_ptr!(tA::Char, tB::Char, m::Integer, n::Integer, k::Integer, alpha::T, A::Ptr{T}, lda::Integer,
                   B::Ptr{T}, ldb::Integer, beta::T, C::Ptr{T}, ldc::Integer) where {T<:Union{Float32,Float64}}
    f = external_gemm(T)
    if f == C_NULL
        own_gemm!(tA, tB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    else
        # Fortran signature: transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, then the
        # hidden lengths of the two character arguments.
        ccall(f, Cvoid, (Ref{UInt8}, Ref{UInt8}, Ref{Int64}, Ref{Int64}, Ref{Int64}, Ref{T}, Ptr{T}, Ref{Int64},
                         Ptr{T}, Ref{Int64}, Ref{T}, Ptr{T}, Ref{Int64}, Clong, Clong),
              UInt8(tA), UInt8(tB), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, 1, 1)
    end
    return nothing
end

# Julia's own OpenBLAS by symbol: constant name and library, so precompilation keeps the ccall.
# Julia 1.5 onwards is ILP64 with the `64_` suffix.
for (T, gemm) in ((Float32, :sgemm_64_), (Float64, :dgemm_64_))
    @eval function own_gemm!(tA::Char, tB::Char, m, n, k, alpha::$T, A::Ptr{$T}, lda, B::Ptr{$T}, ldb,
                             beta::$T, C::Ptr{$T}, ldc)
        ccall(($(QuoteNode(gemm)), $(Base.libblas_name)), Cvoid,
              (Ref{UInt8}, Ref{UInt8}, Ref{Int64}, Ref{Int64}, Ref{Int64}, Ref{$T}, Ptr{$T}, Ref{Int64},
               Ptr{$T}, Ref{Int64}, Ref{$T}, Ptr{$T}, Ref{Int64}, Clong, Clong),
              UInt8(tA), UInt8(tB), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, 1, 1)
    end
end
