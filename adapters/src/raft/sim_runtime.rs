//! openraft's `AsyncRuntime` on madsim, for `--cfg madsim` builds (DESIGN §3).
//!
//! openraft 0.9 calls the real tokio through its `TokioRuntime`, which panics inside the
//! simulator ("no reactor running"). Everything openraft spawns, sleeps on or draws at random
//! goes through this trait, so naming this runtime in the type configuration puts Raft
//! itself under the simulator's scheduler, virtual clock and seeded RNG: election timeouts
//! become a function of the seed (`MADSIM_TEST_SEED`).
//!
//! `tokio::sync` needs no runtime and is used as is; `Instant` is the real tokio instant,
//! whose clock madsim virtualises (`clock_gettime`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::{AsyncRuntime, TokioOneShotSender};
use openraft::{OptionalSend, TokioInstant};

/// The madsim runtime for openraft.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MadsimRuntime;

/// A future with a deadline. madsim's own `timeout` future is not `Send`, which openraft needs.
pub struct SimTimeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<madsim::time::Sleep>>,
}

/// The deadline of a [`SimTimeout`] passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl<R, F: Future<Output = R>> Future for SimTimeout<F> {
    type Output = Result<R, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future first: work finished at the deadline counts as done, as in tokio.
        if let Poll::Ready(value) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn until(deadline: TokioInstant) -> Duration {
    deadline.saturating_duration_since(TokioInstant::now())
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep(until(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        SimTimeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        madsim::rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
